import { createRequire } from "node:module";
import { Browser } from "happy-dom";
import { afterEach, describe, expect, it } from "vitest";
import { RoomStream, type TestApp, startApp } from "./fixture.js";
import { waitFor } from "../helpers.js";

/*
 * The client script runs in happy-dom with the real Turbo build from
 * node_modules and the real server: Turbo's own <turbo-stream-source>
 * element, patched by the script, applies the frames to the DOM. (Chromium
 * tests of the demo app cover real browsers.) Classic scripts are `defer`red
 * because happy-dom fetches blocking scripts synchronously, which would
 * stall this process's own server.
 */
const require = createRequire(import.meta.url);
const TURBO = require.resolve("@hotwired/turbo/dist/turbo.es2017-esm.js");

let app: TestApp | undefined;
let browser: Browser | undefined;

afterEach(async () => {
  await browser?.close();
  browser = undefined;
  await app?.close();
  app = undefined;
});

const append = (text: string): string =>
  `<turbo-stream action="append" target="messages"><template><p>${text}</p></template></turbo-stream>`;

async function openPage(withClientScript: boolean) {
  app = await startApp();
  app.app.get("/turbo.js", (_req, res) => res.type("text/javascript").sendFile(TURBO));
  app.app.get("/live/:id", (req, res) => {
    const tag = app!.turbo.streamSource(res, [RoomStream.for(Number(req.params.id))], { transport: "websocket" });
    res.type("html").send(`<!doctype html><html><head>
${withClientScript ? '<script defer src="/turbo-streams/client.js"></script>' : ""}
<script type="module" src="/turbo.js"></script>
</head><body><div id="messages"></div>${tag}</body></html>`);
  });
  browser = new Browser({
    settings: { enableJavaScriptEvaluation: true, suppressInsecureJavaScriptEnvironmentWarning: true } as never,
  });
  const page = browser.newPage();
  await page.goto(`${app.url}/live/1`);
  const document = page.mainFrame.document;
  const texts = (): string[] => [...document.querySelectorAll("#messages p")].map((p) => p.textContent ?? "");
  return { page, document, texts };
}

describe("client script", () => {
  it("makes a WebSocket <turbo-stream-source> reconnect and resume: no gaps, no duplicates", async () => {
    const { texts } = await openPage(true);
    await waitFor(() => app!.turbo.hub.size === 1);
    await RoomStream.for(1).broadcastRaw(append("first"));
    await waitFor(() => texts().length === 1);

    // the network drops; frames keep being published while the page is away
    for (const socket of app!.sockets) socket.destroy();
    await waitFor(() => app!.turbo.hub.size === 0);
    for (let i = 0; i < 20; i++) await RoomStream.for(1).broadcastRaw(append(`missed ${i}`));
    expect(app!.turbo.hub.size).toBe(0);

    // the script reconnects after its backoff, from the last position it saw
    await waitFor(() => texts().length === 21, { timeoutMs: 10_000 });
    await RoomStream.for(1).broadcastRaw(append("live again"));
    await waitFor(() => texts().length === 22);
    expect(texts()).toEqual(["first", ...Array.from({ length: 20 }, (_, i) => `missed ${i}`), "live again"]);
  });

  it("without the script the standard element still receives frames over WebSocket", async () => {
    const { texts } = await openPage(false);
    await waitFor(() => app!.turbo.hub.size === 1);
    await RoomStream.for(1).broadcastRaw(append("plain turbo"));
    await waitFor(() => texts().length === 1);
    expect(texts()).toEqual(["plain turbo"]);
  });
});
