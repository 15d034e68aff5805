import type { IncomingMessage, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { createRequire } from "node:module";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { LobbyStream, RoomStream, type TestApp, startApp } from "../delivery/fixture.js";
import { waitFor as waitForOnce } from "../helpers.js";
import { browserTestsEnabled, launchChromium } from "./browser.js";

const waitFor: typeof waitForOnce = (check, options = {}) => waitForOnce(check, { timeoutMs: 15_000, ...options });
const require = createRequire(import.meta.url);
const TURBO = require.resolve("@hotwired/turbo/dist/turbo.es2017-esm.js");

const enabled = browserTestsEnabled();

type Transport = "sse" | "websocket";

/**
 * A small app in the shape the issue names: a layout with its own source
 * (the lobby), a room view with the room's source, and a lazy turbo-frame
 * whose own request names the room again. Rooms keep their items in memory;
 * a page renders them, and a publish appends one.
 */
describe.skipIf(!enabled)("one connection per page, in Chromium", () => {
  let app: TestApp;
  let browser: Browser;
  const contexts: BrowserContext[] = [];
  const items = new Map<string, string[]>();
  /** Subscription connections the server holds now, and how many were ever opened. */
  const open = new Set<Socket | ServerResponse>();
  let opened = 0;
  const cut = new Set<Socket>();

  const room = (id: number) => `room-${id}`;

  beforeAll(async () => {
    app = await startApp();
    const turbo = app.turbo;
    app.app.get("/turbo.js", (_req, res) => res.type("text/javascript").sendFile(TURBO));
    const list = (key: string) => (items.get(key) ?? []).map((text) => `<p id="${text}">${text}</p>`).join("");
    app.app.get("/page/:id", (req, res) => {
      const id = Number(req.params.id);
      const transport: Transport = req.query.transport === "websocket" ? "websocket" : "sse";
      const share = req.query.share === "1" ? " data-turbocast-share" : "";
      const q = `transport=${transport}${share ? "&share=1" : ""}`;
      const layout = turbo.streamSource(res, ["lobby"], { transport });
      const view = turbo.streamSource(res, [RoomStream.for(id), "lobby"], { transport });
      res.type("html").send(`<!doctype html><html><head>
<script src="/turbo-streams/client.js"${share}></script>
<script type="module" src="/turbo.js"></script>
</head><body>
${layout}<div id="lobby">${list("lobby")}</div>
<main>${view}<h1>Room ${id}</h1><div id="room">${list(room(id))}</div>
<a id="to-1" href="/page/1?${q}">one</a> <a id="to-3" href="/page/3?${q}">three</a>
<turbo-frame id="side" src="/side/${id}?${q}"></turbo-frame></main>
</body></html>`);
    });
    app.app.get("/side/:id", (req, res) => {
      const transport: Transport = req.query.transport === "websocket" ? "websocket" : "sse";
      const tag = turbo.streamSource(res, [RoomStream.for(Number(req.params.id))], { transport });
      res.type("html").send(`<turbo-frame id="side">${tag}<p>side</p></turbo-frame>`);
    });
    app.server.prependListener("upgrade", (req: IncomingMessage, socket: Socket) => {
      if (!req.url?.startsWith("/turbo-streams")) return;
      opened++;
      open.add(socket);
      cut.add(socket);
      socket.once("close", () => {
        open.delete(socket);
        cut.delete(socket);
      });
    });
    app.server.prependListener("request", (req: IncomingMessage, res: ServerResponse) => {
      if (!req.url?.startsWith("/turbo-streams?") || !req.headers.accept?.includes("text/event-stream")) return;
      opened++;
      open.add(res);
      cut.add(req.socket);
      res.once("close", () => {
        open.delete(res);
        cut.delete(req.socket);
      });
    });
    browser = await launchChromium();
  });

  afterEach(async () => {
    for (const context of contexts.splice(0)) await context.close().catch(() => {});
    await waitFor(() => open.size === 0, { message: "the pages' connections closed" });
  });

  afterAll(async () => {
    await browser?.close();
    await app?.close();
  });

  let counter = 0;
  /** Appends an item to a room (or the lobby) the way a write would: remembered, then broadcast. */
  async function publish(key: string): Promise<string> {
    const text = `${key}-item-${++counter}`;
    items.set(key, [...(items.get(key) ?? []), text]);
    const stream = key === "lobby" ? LobbyStream.for() : RoomStream.for(Number(key.slice(5)));
    const target = key === "lobby" ? "lobby" : "room";
    await stream.broadcastRaw(
      `<turbo-stream action="append" target="${target}"><template><p id="${text}">${text}</p></template></turbo-stream>`,
    );
    return text;
  }

  async function newPage(context?: BrowserContext): Promise<Page> {
    let ctx = context;
    if (!ctx) {
      ctx = await browser.newContext();
      contexts.push(ctx);
    }
    const page = await ctx.newPage();
    page.on("pageerror", (error) => console.error("page error:", error));
    // every stream element Turbo applies, counted by the id of what it appends
    await page.addInitScript(() => {
      const applied: Record<string, number> = {};
      (window as unknown as { __applied: typeof applied }).__applied = applied;
      document.addEventListener("turbo:before-stream-render", (event) => {
        const id = (event.target as HTMLTemplateElement & { templateContent?: DocumentFragment }).templateContent
          ?.firstElementChild?.id;
        if (id) applied[id] = (applied[id] ?? 0) + 1;
      });
    });
    return page;
  }

  /** A replaced union EventSource closes on the server a moment after the browser dropped it: wait for that. */
  const oneConnection = () => waitFor(() => open.size === 1, { message: "one connection" });
  const texts = (page: Page, target: string) =>
    page.$$eval(`#${target} > p`, (ps) => ps.map((p) => p.textContent ?? ""));
  const applied = (page: Page) =>
    page.evaluate(() => (window as unknown as { __applied: Record<string, number> }).__applied);
  const allConnected = async (page: Page, count: number) =>
    (await page.$$eval("turbo-stream-source", (ss) => ss.filter((s) => s.hasAttribute("connected")).length)) ===
      count && (await page.locator("turbo-stream-source").count()) === count;

  for (const transport of ["sse", "websocket"] as const) {
    it(`opens one ${transport} connection for three sources (layout, view, frame) and applies every frame once`, async () => {
      const page = await newPage();
      const before = opened;
      await page.goto(`${app.url}/page/1?transport=${transport}`);
      await waitFor(() => allConnected(page, 3), { message: "three sources connected" });
      await oneConnection();
      // WebSocket: the frame's source subscribed on the open socket; SSE: the union was replaced when it came
      expect(opened - before).toBe(transport === "websocket" ? 1 : 2);
      const sent: string[] = [];
      for (let i = 0; i < 5; i++) sent.push(await publish(room(1)));
      const lobby: string[] = [];
      for (let i = 0; i < 3; i++) lobby.push(await publish("lobby"));
      await waitFor(async () => (await texts(page, "room")).length >= 5 && (await texts(page, "lobby")).length >= 3);
      // one more, so a duplicate in flight would have arrived before it
      sent.push(await publish(room(1)));
      await waitFor(async () => (await texts(page, "room")).includes(sent[5]!));
      expect(await texts(page, "room")).toEqual(items.get(room(1)));
      expect(await texts(page, "lobby")).toEqual(items.get("lobby"));
      const counts = await applied(page);
      for (const text of [...sent, ...lobby]) expect(counts[text], text).toBe(1);
      await oneConnection();
    });

    it(`swaps subscriptions on Drive navigation between rooms over ${transport}, missing no frame published during the swap`, async () => {
      const page = await newPage();
      await page.goto(`${app.url}/page/1?transport=${transport}`);
      await waitFor(() => allConnected(page, 3));
      const before = opened;
      // publish into room 3 and the lobby all through the navigation
      let publishing = true;
      const publisher = (async () => {
        while (publishing) {
          await publish(room(3));
          await publish("lobby");
          await new Promise((resolve) => setTimeout(resolve, 40));
        }
      })();
      try {
        await page.click("#to-3");
        await page.waitForURL(/\/page\/3/);
        await waitFor(() => allConnected(page, 3), { message: "room 3's sources connected" });
        await waitFor(async () => (await page.locator("#side > p").count()) === 1);
      } finally {
        // a failure here must not leave the loop publishing into the tests that follow
        publishing = false;
        await publisher;
      }
      const lastRoom = await publish(room(3));
      const lastLobby = await publish("lobby");
      await waitFor(
        async () => (await texts(page, "room")).includes(lastRoom) && (await texts(page, "lobby")).includes(lastLobby),
        { message: "the last frames arrived" },
      );
      const shown = await texts(page, "room");
      const want = items.get(room(3))!;
      if (JSON.stringify(shown) !== JSON.stringify(want)) {
        console.log(
          "MISSING",
          want.filter((t) => !shown.includes(t)),
          "EXTRA",
          shown.filter((t) => !want.includes(t)),
        );
        console.log(
          "FIRST DIFF",
          shown.findIndex((t, i) => t !== want[i]),
          shown.slice(-12),
          want.slice(-12),
        );
      }
      expect(shown).toEqual(want);
      expect(await texts(page, "lobby")).toEqual(items.get("lobby"));
      // WebSocket: the same socket; SSE: the union EventSource was replaced, never two at once
      if (transport === "websocket") expect(opened).toBe(before);
      await oneConnection();
      expect(await page.evaluate(() => (window as unknown as { __noReload?: boolean }).__noReload)).toBeUndefined();
    });

    it(`resumes every subscription of the page exactly after a server-side cut (${transport})`, async () => {
      const page = await newPage();
      await page.goto(`${app.url}/page/1?transport=${transport}`);
      await waitFor(() => allConnected(page, 3));
      await page.evaluate(() => ((window as unknown as { __noReload: boolean }).__noReload = true));
      for (const socket of cut) socket.destroy();
      await waitFor(async () => !(await allConnected(page, 3)) || open.size === 0);
      const during = [await publish(room(1)), await publish("lobby"), await publish(room(1)), await publish("lobby")];
      await waitFor(() => allConnected(page, 3), { message: "reconnected" });
      const after = await publish(room(1));
      await waitFor(async () => (await texts(page, "room")).includes(after));
      expect(await texts(page, "room")).toEqual(items.get(room(1)));
      expect(await texts(page, "lobby")).toEqual(items.get("lobby"));
      const counts = await applied(page);
      for (const text of [...during, after]) expect(counts[text], text).toBe(1);
      expect(await page.evaluate(() => (window as unknown as { __noReload?: boolean }).__noReload)).toBe(true);
      await oneConnection();
    });

    it(`shares one ${transport} connection among three tabs, and hands it over when the leader tab closes`, async () => {
      const context = await browser.newContext();
      contexts.push(context);
      const tabs: Page[] = [];
      for (const id of [1, 3, 2]) {
        const tab = await newPage(context);
        // room 2 is private to alice: use room 1 again for the third tab
        await tab.goto(`${app.url}/page/${id === 2 ? 1 : id}?transport=${transport}&share=1`);
        await waitFor(() => allConnected(tab, 3), { message: `tab ${tabs.length + 1} connected` });
        tabs.push(tab);
      }
      await oneConnection();
      const one = await publish(room(1));
      const three = await publish(room(3));
      const lobby = await publish("lobby");
      for (const [i, tab] of tabs.entries()) {
        await waitFor(async () => (await texts(tab, "lobby")).includes(lobby), { message: `tab ${i + 1} lobby` });
        const expected = i === 1 ? three : one;
        await waitFor(async () => (await texts(tab, "room")).includes(expected), { message: `tab ${i + 1} room` });
        expect(await texts(tab, "room")).toEqual(items.get(i === 1 ? room(3) : room(1)));
      }

      // the first tab leads; it closes while frames keep coming
      let publishing = true;
      const publisher = (async () => {
        while (publishing) {
          await publish(room(3));
          await publish("lobby");
          await new Promise((resolve) => setTimeout(resolve, 40));
        }
      })();
      const before = opened;
      await tabs[0]!.close();
      // another tab took over: a new connection, and only one
      await waitFor(() => opened > before && open.size === 1, { message: "a new leader connected" });
      await waitFor(async () => (await allConnected(tabs[1]!, 3)) && (await allConnected(tabs[2]!, 3)));
      publishing = false;
      await publisher;
      const lastRoom = await publish(room(3));
      const lastLobby = await publish("lobby");
      const lastOne = await publish(room(1));
      await waitFor(async () => (await texts(tabs[1]!, "room")).includes(lastRoom));
      await waitFor(async () => (await texts(tabs[2]!, "room")).includes(lastOne));
      for (const tab of tabs.slice(1)) {
        await waitFor(async () => (await texts(tab, "lobby")).includes(lastLobby));
        expect(await texts(tab, "lobby")).toEqual(items.get("lobby"));
      }
      expect(await texts(tabs[1]!, "room")).toEqual(items.get(room(3)));
      expect(await texts(tabs[2]!, "room")).toEqual(items.get(room(1)));
      await oneConnection();
    });
  }
});
