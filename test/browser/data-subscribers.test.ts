import { spawn } from "node:child_process";
import path from "node:path";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ChatApp, createChatApp } from "../../src/app/app.js";
import { closeServer, listen, tempDir, waitFor as waitForOnce } from "../helpers.js";
import { browserTestsEnabled, launchChromium } from "./browser.js";

const waitFor: typeof waitForOnce = (check, options = {}) => waitForOnce(check, { timeoutMs: 15_000, ...options });

describe.skipIf(!browserTestsEnabled())("data subscribers in Chromium: the room's live message count", () => {
  let chat: ChatApp;
  let base: string;
  let browser: Browser;
  let tmp: { dir: string; cleanup: () => void };
  let dbFile: string;

  beforeAll(async () => {
    tmp = tempDir("turbocast-data-browser-");
    dbFile = path.join(tmp.dir, "chat.db");
    chat = await createChatApp({ dbFile, secret: "browser-data-secret-browser-data-secret" });
    base = (await listen(chat.server)).url;
    browser = await launchChromium();
  });

  afterAll(async () => {
    await browser?.close();
    await chat?.close();
    if (chat) await closeServer(chat.server).catch(() => {});
    tmp?.cleanup();
  });

  async function signIn(name: string): Promise<Page> {
    const page = await (await browser.newContext()).newPage();
    page.on("pageerror", (error) => console.error(`[${name}] page error:`, error));
    await page.goto(`${base}/login`);
    await page.fill("input[name=name]", name);
    await Promise.all([page.waitForURL(`${base}/`), page.click("button[type=submit]")]);
    return page;
  }

  const roomId = (name: string) =>
    (chat.db.$client.prepare("SELECT id FROM rooms WHERE name = ?").get(name) as { id: number }).id;
  const countIn = (id: number) =>
    (chat.db.$client.prepare("SELECT count(*) AS n FROM messages WHERE room_id = ?").get(id) as { n: number }).n;

  function writeFromAnotherProcess(id: number, text: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const child = spawn(
        process.execPath,
        ["--import", "tsx", "test/fixtures/chat-writer.ts", dbFile, String(id), "1", text],
        { stdio: "inherit" },
      );
      child.once("error", reject);
      child.once("exit", (code) => (code === 0 ? resolve() : reject(new Error(`writer exited ${code}`))));
    });
  }

  it("updates from a write in another process and a delete, on the page's one WebSocket", async () => {
    const bob = await signIn("bob");
    const sockets: string[] = [];
    bob.on("websocket", (ws) => sockets.push(ws.url()));
    const id = roomId("random");
    await bob.goto(`${base}/rooms/${id}`);
    const count = bob.locator("#message-count");
    const label = (n: number) => `${n} message${n === 1 ? "" : "s"}`;
    const before = countIn(id);
    // the sync, through Turbocast.subscribe (the server-rendered text says the same, so wait for the data subscription)
    await waitFor(() => bob.evaluate(() => document.querySelector("turbo-stream-source")?.hasAttribute("connected")));
    await waitFor(async () => (await count.textContent()) === label(before));

    await writeFromAnotherProcess(id, `counted ${Date.now()}`);
    await waitFor(async () => (await count.textContent()) === label(before + 1), {
      message: "the count follows a write made by another process",
    });

    chat.db.$client.prepare("DELETE FROM messages WHERE id = (SELECT max(id) FROM messages WHERE room_id = ?)").run(id);
    await chat.turbo.feed.drain();
    await waitFor(async () => (await count.textContent()) === label(before), { message: "and a delete" });
    // the room's HTML source (WebSocket) and the count's data subscription share one socket
    expect(sockets).toHaveLength(1);
    await bob.context().close();
  });
});
