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
    // happy-dom caches a response without Cache-Control, which would keep a refresh from reaching the server
    res.set("Cache-Control", "no-store");
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

  // (happy-dom fetches the refreshed page but renders an empty body; the Chromium test of the demo follows a refresh through)
  it("stops reconnecting when a reconnect is refused for good, and refreshes the page once", async () => {
    await openPage(true);
    await waitFor(() => app!.turbo.hub.size === 1);
    const seen = { loads: 0, probes: 0, upgrades: 0 };
    app!.server.on("request", (req: import("node:http").IncomingMessage) => {
      if (req.url?.startsWith("/live/")) seen.loads++;
      if (req.method === "HEAD") seen.probes++;
    });
    app!.server.on("upgrade", () => seen.upgrades++);
    // the room turns private (only alice): this anonymous page may no longer subscribe
    app!.sqlite.prepare("update rooms set private = 1 where id = 1").run();
    for (const socket of app!.sockets) socket.destroy();
    // the page's shared socket comes back (its upgrade checks only the Origin) and its subscribe is
    // answered {"type":"refused","status":403}: the page is refreshed, with no HEAD probe needed
    // (a URL-subscribed socket's refused handshake is what the probe is for)
    await waitFor(() => seen.loads === 1, { timeoutMs: 10_000, message: "the page was refreshed" });
    expect(seen.probes).toBe(0);
    expect(seen.upgrades).toBe(1);
    const settled = { ...seen };
    // long enough for several backoff retries (0.25 s, 0.5 s, 1 s…) had the script kept trying
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    expect(seen).toEqual(settled);
  });

  it("does not reconnect a socket closed with 4403 (access ended): the refresh frame it got reloads the page", async () => {
    await openPage(true);
    await waitFor(() => app!.turbo.hub.size === 1);
    const seen = { loads: 0, upgrades: 0 };
    app!.server.on("request", (req: import("node:http").IncomingMessage) => {
      if (req.url?.startsWith("/live/")) seen.loads++;
    });
    app!.server.on("upgrade", () => seen.upgrades++);
    expect(await app!.turbo.disconnect({ stream: RoomStream.for(1) })).toBe(1);
    await waitFor(() => seen.loads === 1, { timeoutMs: 10_000, message: "the refresh frame reloaded the page" });
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    expect(seen).toEqual({ loads: 1, upgrades: 0 });
  });

  it("without the script the standard element still receives frames over WebSocket", async () => {
    const { texts } = await openPage(false);
    await waitFor(() => app!.turbo.hub.size === 1);
    await RoomStream.for(1).broadcastRaw(append("plain turbo"));
    await waitFor(() => texts().length === 1);
    expect(texts()).toEqual(["plain turbo"]);
  });
});
