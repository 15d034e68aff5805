import { spawn } from "node:child_process";
import type { Socket } from "node:net";
import type { IncomingMessage, ServerResponse } from "node:http";
import path from "node:path";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ChatApp, createChatApp } from "../../src/app/app.js";
import { closeServer, listen, tempDir, waitFor as waitForOnce } from "../helpers.js";
import { browserTestsEnabled, ensureOutputDir, launchChromium } from "./browser.js";

/** The shared waitFor with a longer default: a browser on a CI machine busy with other test files can take seconds per step. */
const waitFor: typeof waitForOnce = (check, options = {}) => waitForOnce(check, { timeoutMs: 15_000, ...options });

const enabled = browserTestsEnabled();

describe.skipIf(!enabled)("the chat app in Chromium", () => {
  let chat: ChatApp;
  let base: string;
  let browser: Browser;
  let tmp: { dir: string; cleanup: () => void };
  let dbFile: string;
  const contexts: BrowserContext[] = [];
  /** Stream connections the server holds, so a test can cut them. */
  const streamSockets = new Set<Socket>();

  beforeAll(async () => {
    tmp = tempDir("turbocast-chat-");
    dbFile = path.join(tmp.dir, "chat.db");
    chat = await createChatApp({ dbFile, secret: "browser-test-secret-browser-test-secret" });
    chat.server.prependListener("upgrade", (_req: IncomingMessage, socket: Socket) => {
      streamSockets.add(socket);
      socket.once("close", () => streamSockets.delete(socket));
    });
    chat.server.prependListener("request", (req: IncomingMessage, res: ServerResponse) => {
      if (req.url?.startsWith(chat.turbo.path) && req.headers.accept?.includes("text/event-stream")) {
        streamSockets.add(req.socket);
        res.once("close", () => streamSockets.delete(req.socket));
      }
    });
    base = (await listen(chat.server)).url;
    browser = await launchChromium();
  });

  afterAll(async () => {
    for (const context of contexts) await context.close().catch(() => {});
    await browser?.close();
    await chat?.close();
    if (chat) await closeServer(chat.server).catch(() => {});
    tmp?.cleanup();
  });

  async function signIn(name: string): Promise<Page> {
    const context = await browser.newContext();
    contexts.push(context);
    const page = await context.newPage();
    page.on("pageerror", (error) => console.error(`[${name}] page error:`, error));
    await page.goto(`${base}/login`);
    await page.fill("input[name=name]", name);
    await Promise.all([page.waitForURL(`${base}/`), page.click("button[type=submit]")]);
    expect(await page.locator("#current-user").textContent()).toBe(name);
    return page;
  }

  const roomId = (name: string) =>
    (chat.db.$client.prepare("SELECT id FROM rooms WHERE name = ?").get(name) as { id: number }).id;

  const messageItems = (page: Page, text: string) => page.locator("#messages > li", { hasText: text });

  /**
   * Posts a message and waits until the page has its own copy and a fresh
   * form: text typed before the previous post's response replaced the form
   * would be lost with it.
   */
  async function send(page: Page, body: string): Promise<void> {
    await page.fill("#new_message input[name=body]", body);
    await page.press("#new_message input[name=body]", "Enter");
    await waitFor(
      async () =>
        (await page.inputValue("#new_message input[name=body]")) === "" &&
        (await messageItems(page, body).count()) >= 1,
      {
        message: `the post of ${JSON.stringify(body)} went through`,
      },
    );
  }

  for (const [label, room] of [
    ["Server-Sent Events", "general"],
    ["WebSocket", "random"],
  ] as const) {
    it(`delivers a message, its edit and its delete to another user over ${label}`, async () => {
      const alice = await signIn("alice");
      const bob = await signIn("bob");
      const id = roomId(room);
      await alice.goto(`${base}/rooms/${id}`);
      await bob.goto(`${base}/rooms/${id}`);
      expect(await bob.locator("#transport").textContent()).toBe(label === "WebSocket" ? "WebSocket" : "SSE");

      const text = `hello over ${label} ${Date.now()}`;
      await send(alice, text);
      await waitFor(async () => (await messageItems(bob, text).count()) === 1, { message: "bob sees alice's message" });
      // the form posts through Turbo: no full reload, the composer is cleared
      await waitFor(async () => (await alice.inputValue("#new_message input[name=body]")) === "");
      await waitFor(async () => (await messageItems(alice, text).count()) === 1);

      const item = messageItems(alice, text);
      await item.locator("a", { hasText: "Edit" }).click();
      await alice.fill('input[aria-label="Edit message"]', `${text} (changed)`);
      await alice.click("text=Save");
      await waitFor(async () => (await messageItems(bob, `${text} (changed)`).locator(".edited").count()) === 1, {
        message: "bob sees the edit",
      });
      // one broadcast template for everyone; edit/delete show only on the author's own page
      expect(await messageItems(bob, text).locator(".owner-actions").isVisible()).toBe(false);
      await waitFor(() => messageItems(alice, text).locator(".owner-actions").isVisible(), {
        message: "alice sees her own actions",
      });

      await messageItems(alice, text).locator("button", { hasText: "Delete" }).click();
      await waitFor(async () => (await messageItems(bob, text).count()) === 0, { message: "bob sees the delete" });
      await waitFor(async () => (await messageItems(alice, text).count()) === 0);
      await alice.context().close();
      await bob.context().close();
    });
  }

  it("shows a row written into the SQLite file by a separate process", async () => {
    const bob = await signIn("bob");
    const id = roomId("general");
    await bob.goto(`${base}/rooms/${id}`);
    const text = `from another process ${Date.now()}`;
    await new Promise<void>((resolve, reject) => {
      const child = spawn(
        process.execPath,
        ["--import", "tsx", "test/fixtures/chat-writer.ts", dbFile, String(id), "1", text],
        {
          stdio: "inherit",
        },
      );
      child.once("error", reject);
      child.once("exit", (code) => (code === 0 ? resolve() : reject(new Error(`writer exited ${code}`))));
    });
    await waitFor(async () => (await messageItems(bob, text).count()) === 1, { message: "the external write appears" });
    await bob.context().close();
  });

  it("gives a non-member nothing of a private room", async () => {
    const alice = await signIn("alice");
    const carol = await signIn("carol");
    const secret = roomId("secret plans");
    await alice.goto(`${base}/rooms/${secret}`);
    // the room page itself refuses carol
    const response = await carol.goto(`${base}/rooms/${secret}`);
    expect(response!.status()).toBe(404);
    expect(await carol.locator("#messages").count()).toBe(0);
    // and alice's signed stream URL, replayed with carol's cookie, is refused
    const src = await alice.locator("turbo-stream-source").getAttribute("src");
    const status = await carol.evaluate(
      async (url) => (await fetch(url, { headers: { accept: "text/event-stream" } })).status,
      src!,
    );
    expect(status).toBe(403);
    // carol's room list does not grow with a message or room in it
    await carol.goto(`${base}/`);
    await send(alice, `secret ${Date.now()}`);
    expect(await carol.locator("#rooms").textContent()).not.toContain("secret plans");
    await alice.context().close();
    await carol.context().close();
  });

  it("ends a removed member's open page: it refreshes into the not-found page and never shows a later message", async () => {
    const alice = await signIn("alice");
    const bob = await signIn("bob");
    const secret = roomId("secret plans");
    await alice.goto(`${base}/rooms/${secret}`);
    await bob.goto(`${base}/rooms/${secret}`);
    const before = `before the removal ${Date.now()}`;
    await send(alice, before);
    await waitFor(async () => (await messageItems(bob, before).count()) === 1, { message: "bob is live in the room" });
    await alice.screenshot({ path: path.join(ensureOutputDir(), "private-room-members.png"), fullPage: true });

    await Promise.all([
      alice.waitForURL(`${base}/rooms/${secret}`),
      alice.locator("#members button", { hasText: "Remove" }).first().click(),
    ]);
    // bob's stream got a refresh and was closed: his page reloads into the not-found page
    await waitFor(async () => (await bob.locator("body").textContent())?.includes("No such room") === true, {
      message: "bob's page refreshed into the not-found page",
    });
    expect(await bob.locator("#messages").count()).toBe(0);
    expect(await bob.locator("turbo-stream-source").count()).toBe(0);

    // alice's page keeps working; bob's never shows what follows
    const after = `after the removal ${Date.now()}`;
    await send(alice, after);
    await waitFor(async () => (await messageItems(alice, after).count()) === 1);
    expect(await bob.getByText(after).count()).toBe(0);
    expect(await alice.locator("#members li", { hasText: "bob" }).count()).toBe(0);
    await alice.context().close();
    await bob.context().close();
    // bob back in the room, for the other tests
    const bobId = (chat.db.$client.prepare("SELECT id FROM users WHERE name = 'bob'").get() as { id: number }).id;
    chat.db.$client.prepare("INSERT INTO memberships (room_id, user_id) VALUES (?, ?)").run(secret, bobId);
  });

  it("ends the open pages of a user who signs out: another tab refreshes into the login page", async () => {
    const bob = await signIn("bob");
    const other = await bob.context().newPage();
    await other.goto(`${base}/rooms/${roomId("random")}`);
    await bob.goto(`${base}/rooms/${roomId("general")}`);
    // live, not only rendered: a sign-out before the other tab subscribed would have nothing to end
    await waitFor(async () => (await other.locator("turbo-stream-source[connected]").count()) === 1, {
      message: "the other tab's subscription is live",
    });
    await Promise.all([bob.waitForURL(`${base}/login`), bob.click("text=Sign out")]);
    await waitFor(() => other.url() === `${base}/login`, { message: "the other tab refreshed into the login page" });
    expect(await other.locator("turbo-stream-source").count()).toBe(0);
    await bob.context().close();
  });

  for (const [label, room] of [
    ["Server-Sent Events", "general"],
    ["WebSocket", "random"],
  ] as const) {
    it(`catches up without reload after the server cuts the ${label} connection`, async () => {
      const bob = await signIn("bob");
      const id = roomId(room);
      await bob.goto(`${base}/rooms/${id}`);
      const marker = `before cut ${label} ${Date.now()}`;
      chat.db.$client
        .prepare("INSERT INTO messages (room_id, user_id, body, created_at) VALUES (?, 1, ?, ?)")
        .run(id, marker, Date.now());
      await waitFor(async () => (await messageItems(bob, marker).count()) === 1);
      await bob.evaluate(() => ((window as unknown as { __noReload: boolean }).__noReload = true));

      await waitFor(() => streamSockets.size > 0, { message: "the page holds a stream connection" });
      for (const socket of streamSockets) socket.destroy();
      const texts = Array.from({ length: 5 }, (_, i) => `during cut ${label} ${i} ${Date.now()}`);
      for (const text of texts) {
        chat.db.$client
          .prepare("INSERT INTO messages (room_id, user_id, body, created_at) VALUES (?, 1, ?, ?)")
          .run(id, text, Date.now());
      }
      for (const text of texts) {
        await waitFor(async () => (await messageItems(bob, text).count()) === 1, {
          timeoutMs: 15_000,
          message: `caught up: ${text}`,
        });
      }
      // nothing doubled, and the page was not reloaded
      for (const text of [marker, ...texts]) expect(await messageItems(bob, text).count()).toBe(1);
      expect(await bob.evaluate(() => (window as unknown as { __noReload?: boolean }).__noReload)).toBe(true);
      await bob.context().close();
    });
  }

  it("grows another user's room list live when a room is created", async () => {
    const alice = await signIn("alice");
    const bob = await signIn("bob");
    await bob.goto(`${base}/`);
    const name = `room ${Date.now()}`;
    await alice.goto(`${base}/`);
    await alice.fill('input[aria-label="Room name"]', name);
    await Promise.all([alice.waitForURL(/\/rooms\/\d+$/), alice.click("text=Create")]);
    await waitFor(async () => (await bob.locator("#rooms > li", { hasText: name }).count()) === 1, {
      message: "bob's list grows",
    });
    await alice.context().close();
    await bob.context().close();
  });

  it("removes a room made private from carol's open room list live, and keeps it on alice's", async () => {
    const alice = await signIn("alice");
    const carol = await signIn("carol");
    const name = `lounge ${Date.now()}`;
    await alice.goto(`${base}/`);
    await alice.fill('input[aria-label="Room name"]', name);
    await Promise.all([alice.waitForURL(/\/rooms\/\d+$/), alice.click("text=Create")]);
    const roomUrl = alice.url();
    await carol.goto(`${base}/`);
    const listed = (page: Page) => page.locator("#rooms > li", { hasText: name }).count();
    await waitFor(async () => (await listed(carol)) === 1, { message: "carol sees the public room" });
    // alice keeps the list open in a second tab while she makes the room private in the first
    const aliceList = await alice.context().newPage();
    await aliceList.goto(`${base}/`);
    expect(await listed(aliceList)).toBe(1);
    await alice.goto(roomUrl);
    await Promise.all([alice.waitForURL(roomUrl), alice.click("#make-private")]);
    await waitFor(async () => (await listed(carol)) === 0, { message: "the room leaves carol's list" });
    // alice's list got the remove from the public list and the insert into her own: still there, once
    await waitFor(async () => (await aliceList.locator(`#rooms > li:has-text("${name}") .private`).count()) === 1, {
      message: "alice's list shows it, now private",
    });
    expect(await listed(aliceList)).toBe(1);
    await alice.context().close();
    await carol.context().close();
  });

  it("refreshes a non-member's open page of a room made private into the not-found page (turbo.reauthorize)", async () => {
    const alice = await signIn("alice");
    const carol = await signIn("carol");
    await alice.goto(`${base}/`);
    await alice.fill('input[aria-label="Room name"]', `den ${Date.now()}`);
    await Promise.all([alice.waitForURL(/\/rooms\/\d+$/), alice.click("text=Create")]);
    const roomUrl = alice.url();
    await carol.goto(roomUrl);
    await waitFor(async () => (await carol.locator("turbo-stream-source").count()) === 1);
    const before = `while public ${Date.now()}`;
    await send(alice, before);
    await waitFor(async () => (await messageItems(carol, before).count()) === 1, {
      message: "carol is live in the room",
    });
    await Promise.all([alice.waitForURL(roomUrl), alice.click("#make-private")]);
    await waitFor(async () => (await carol.locator("body").textContent())?.includes("No such room") === true, {
      message: "carol's page refreshed into the not-found page",
    });
    const after = `now private ${Date.now()}`;
    await send(alice, after);
    await waitFor(async () => (await messageItems(alice, after).count()) === 1);
    expect(await carol.getByText(after).count()).toBe(0);
    await alice.context().close();
    await carol.context().close();
  });

  it("keeps one subscription and one copy of each message across Turbo Drive visits and back/forward", async () => {
    const alice = await signIn("alice");
    const bob = await signIn("bob");
    const id = roomId("general");
    await bob.goto(`${base}/rooms/${id}`);
    await bob.click("text=← Rooms");
    await bob.waitForURL(`${base}/`);
    await bob.click(`#rooms a[href="/rooms/${id}"]`);
    await bob.waitForURL(`${base}/rooms/${id}`);
    await bob.goBack();
    await bob.waitForURL(`${base}/`);
    await bob.goForward();
    await bob.waitForURL(`${base}/rooms/${id}`);
    await alice.goto(`${base}/rooms/${id}`);
    const text = `after navigation ${Date.now()}`;
    await send(alice, text);
    await waitFor(async () => (await messageItems(bob, text).count()) === 1);
    // give a duplicate subscription the chance to deliver a second copy: wait for a later frame
    const later = `later ${Date.now()}`;
    await send(alice, later);
    await waitFor(async () => (await messageItems(bob, later).count()) === 1);
    expect(await messageItems(bob, text).count()).toBe(1);
    expect(await bob.locator("turbo-stream-source").count()).toBe(1);
    await alice.context().close();
    await bob.context().close();
  });

  it("saves a screenshot of a room page", async () => {
    const alice = await signIn("alice");
    await alice.goto(`${base}/rooms/${roomId("general")}`);
    await send(alice, "Screenshots prove the page looks like an app.");
    await waitFor(async () => (await messageItems(alice, "Screenshots prove").count()) >= 1);
    const file = path.join(ensureOutputDir(), "room-page.png");
    await alice.screenshot({ path: file, fullPage: true });
    await alice.context().close();
  });
});
