import { spawn } from "node:child_process";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { createChatApp } from "../../src/app/app.js";
import { tempDir } from "../helpers.js";
import { browserTestsEnabled, ensureOutputDir } from "./browser.js";
import {
  TRANSPORTS,
  chatInBrowser,
  deliverMessageEditAndDelete,
  makeListedRoomPrivate,
  messageItems,
  send,
  waitFor,
} from "./chat-harness.js";

const enabled = browserTestsEnabled();

describe.skipIf(!enabled)("the chat app in Chromium", () => {
  let tmp: { dir: string; cleanup: () => void } | undefined;
  let dbFile: string;
  /** Stream connections the server holds, so a test can cut them. */
  const streamSockets = new Set<Socket>();
  const harness = chatInBrowser({
    async start() {
      tmp = tempDir("turbocast-chat-");
      dbFile = path.join(tmp.dir, "chat.db");
      const chat = await createChatApp({ dbFile, secret: "browser-test-secret-browser-test-secret" });
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
      return chat;
    },
    roomId: (chat, name) =>
      (chat.db.$client.prepare("SELECT id FROM rooms WHERE name = ?").get(name) as { id: number }).id,
    cleanup: () => tmp?.cleanup(),
  });
  const { signIn, roomId } = harness;

  for (const [label, room] of TRANSPORTS) {
    it(`delivers a message, its edit and its delete to another user over ${label}`, () =>
      deliverMessageEditAndDelete(harness, label, room));
  }

  it("shows a row written into the SQLite file by a separate process", async () => {
    const bob = await signIn("bob");
    const id = await roomId("general");
    await bob.goto(`${harness.base}/rooms/${id}`);
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
    const secret = await roomId("secret plans");
    await alice.goto(`${harness.base}/rooms/${secret}`);
    // the room page itself refuses carol
    const response = await carol.goto(`${harness.base}/rooms/${secret}`);
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
    await carol.goto(`${harness.base}/`);
    await send(alice, `secret ${Date.now()}`);
    expect(await carol.locator("#rooms").textContent()).not.toContain("secret plans");
    await alice.context().close();
    await carol.context().close();
  });

  it("ends a removed member's open page: it refreshes into the not-found page and never shows a later message", async () => {
    const alice = await signIn("alice");
    const bob = await signIn("bob");
    const secret = await roomId("secret plans");
    await alice.goto(`${harness.base}/rooms/${secret}`);
    await bob.goto(`${harness.base}/rooms/${secret}`);
    const before = `before the removal ${Date.now()}`;
    await send(alice, before);
    await waitFor(async () => (await messageItems(bob, before).count()) === 1, { message: "bob is live in the room" });
    await alice.screenshot({ path: path.join(ensureOutputDir(), "private-room-members.png"), fullPage: true });

    await Promise.all([
      alice.waitForURL(`${harness.base}/rooms/${secret}`),
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
    const bobId = (harness.chat.db.$client.prepare("SELECT id FROM users WHERE name = 'bob'").get() as { id: number })
      .id;
    harness.chat.db.$client.prepare("INSERT INTO memberships (room_id, user_id) VALUES (?, ?)").run(secret, bobId);
  });

  it("ends the open pages of a user who signs out: another tab refreshes into the login page", async () => {
    const bob = await signIn("bob");
    const other = await bob.context().newPage();
    await other.goto(`${harness.base}/rooms/${await roomId("random")}`);
    await bob.goto(`${harness.base}/rooms/${await roomId("general")}`);
    // live, not only rendered: a sign-out before the other tab subscribed would have nothing to end
    await waitFor(async () => (await other.locator("turbo-stream-source[connected]").count()) === 1, {
      message: "the other tab's subscription is live",
    });
    await Promise.all([bob.waitForURL(`${harness.base}/login`), bob.click("text=Sign out")]);
    await waitFor(() => other.url() === `${harness.base}/login`, {
      message: "the other tab refreshed into the login page",
    });
    expect(await other.locator("turbo-stream-source").count()).toBe(0);
    await bob.context().close();
  });

  for (const [label, room] of [
    ["Server-Sent Events", "general"],
    ["WebSocket", "random"],
  ] as const) {
    it(`catches up without reload after the server cuts the ${label} connection`, async () => {
      const bob = await signIn("bob");
      const id = await roomId(room);
      await bob.goto(`${harness.base}/rooms/${id}`);
      const marker = `before cut ${label} ${Date.now()}`;
      harness.chat.db.$client
        .prepare("INSERT INTO messages (room_id, user_id, body, created_at) VALUES (?, 1, ?, ?)")
        .run(id, marker, Date.now());
      await waitFor(async () => (await messageItems(bob, marker).count()) === 1);
      await bob.evaluate(() => ((window as unknown as { __noReload: boolean }).__noReload = true));

      await waitFor(() => streamSockets.size > 0, { message: "the page holds a stream connection" });
      for (const socket of streamSockets) socket.destroy();
      const texts = Array.from({ length: 5 }, (_, i) => `during cut ${label} ${i} ${Date.now()}`);
      for (const text of texts) {
        harness.chat.db.$client
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
    await bob.goto(`${harness.base}/`);
    const name = `room ${Date.now()}`;
    await alice.goto(`${harness.base}/`);
    await alice.fill('input[aria-label="Room name"]', name);
    await Promise.all([alice.waitForURL(/\/rooms\/\d+$/), alice.click("text=Create")]);
    await waitFor(async () => (await bob.locator("#rooms > li", { hasText: name }).count()) === 1, {
      message: "bob's list grows",
    });
    await alice.context().close();
    await bob.context().close();
  });

  it("removes a room made private from carol's open room list live, and keeps it on alice's", () =>
    makeListedRoomPrivate(harness));

  it("refreshes a non-member's open page of a room made private into the not-found page (turbo.reauthorize)", async () => {
    const alice = await signIn("alice");
    const carol = await signIn("carol");
    await alice.goto(`${harness.base}/`);
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
    const id = await roomId("general");
    await bob.goto(`${harness.base}/rooms/${id}`);
    await bob.click("text=← Rooms");
    await bob.waitForURL(`${harness.base}/`);
    await bob.click(`#rooms a[href="/rooms/${id}"]`);
    await bob.waitForURL(`${harness.base}/rooms/${id}`);
    await bob.goBack();
    await bob.waitForURL(`${harness.base}/`);
    await bob.goForward();
    await bob.waitForURL(`${harness.base}/rooms/${id}`);
    await alice.goto(`${harness.base}/rooms/${id}`);
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
    await alice.goto(`${harness.base}/rooms/${await roomId("general")}`);
    await send(alice, "Screenshots prove the page looks like an app.");
    await waitFor(async () => (await messageItems(alice, "Screenshots prove").count()) >= 1);
    const file = path.join(ensureOutputDir(), "room-page.png");
    await alice.screenshot({ path: file, fullPage: true });
    await alice.context().close();
  });
});
