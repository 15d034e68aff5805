/**
 * The demo chat on PostgreSQL (what `DATABASE_URL=postgres://… npm start`
 * runs), in Chromium: tables created and seeded on first start in a schema
 * of the test's own, a message and its edit and delete delivered to another
 * user over SSE and WebSocket, and a row written by `psql` shown live.
 */
import { spawnSync } from "node:child_process";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ChatApp, createChatApp } from "../../src/app/app.js";
import { closeServer, listen, waitFor as waitForOnce } from "../helpers.js";
import { createTestSchema, type TestSchema } from "../postgres-app/pg-helpers.js";
import { browserTestsEnabled, launchChromium } from "./browser.js";

const waitFor: typeof waitForOnce = (check, options = {}) => waitForOnce(check, { timeoutMs: 15_000, ...options });

const enabled = browserTestsEnabled();

describe.skipIf(!enabled)("the chat app on PostgreSQL in Chromium", () => {
  let chat: ChatApp;
  let base: string;
  let browser: Browser;
  let schema: TestSchema;
  const contexts: BrowserContext[] = [];

  beforeAll(async () => {
    schema = await createTestSchema("tcchat");
    // the search_path rides in the URL, as a deployment's DATABASE_URL may carry it
    const url = `${schema.url}?options=${encodeURIComponent(`-c search_path=${schema.name}`)}`;
    chat = await createChatApp({ databaseUrl: url, secret: "browser-test-secret-browser-test-secret" });
    base = (await listen(chat.server)).url;
    browser = await launchChromium();
  });

  afterAll(async () => {
    for (const context of contexts) await context.close().catch(() => {});
    await browser?.close();
    await chat?.close();
    if (chat) await closeServer(chat.server).catch(() => {});
    await schema?.drop();
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

  const roomId = async (name: string): Promise<number> =>
    (await schema.admin.query(`SELECT id FROM "${schema.name}".rooms WHERE name = $1`, [name])).rows[0].id;

  const messageItems = (page: Page, text: string) => page.locator("#messages > li", { hasText: text });

  async function send(page: Page, body: string): Promise<void> {
    await page.fill("#new_message input[name=body]", body);
    await page.press("#new_message input[name=body]", "Enter");
    await waitFor(
      async () =>
        (await page.inputValue("#new_message input[name=body]")) === "" &&
        (await messageItems(page, body).count()) >= 1,
      { message: `the post of ${JSON.stringify(body)} went through` },
    );
  }

  for (const [label, room] of [
    ["Server-Sent Events", "general"],
    ["WebSocket", "random"],
  ] as const) {
    it(`delivers a message, its edit and its delete to another user over ${label}`, async () => {
      const alice = await signIn("alice");
      const bob = await signIn("bob");
      const id = await roomId(room);
      await alice.goto(`${base}/rooms/${id}`);
      await bob.goto(`${base}/rooms/${id}`);
      expect(await bob.locator("#transport").textContent()).toBe(label === "WebSocket" ? "WebSocket" : "SSE");

      const text = `hello over ${label} ${Date.now()}`;
      await send(alice, text);
      await waitFor(async () => (await messageItems(bob, text).count()) === 1, { message: "bob sees alice's message" });
      // the broadcast partial's author comes from MessageStream.locals, an awaited query
      expect(await messageItems(bob, text).locator(".author").textContent()).toBe("alice");

      await messageItems(alice, text).locator("a", { hasText: "Edit" }).click();
      await alice.fill('input[aria-label="Edit message"]', `${text} (changed)`);
      await alice.click("text=Save");
      await waitFor(async () => (await messageItems(bob, `${text} (changed)`).locator(".edited").count()) === 1, {
        message: "bob sees the edit",
      });

      await messageItems(alice, text).locator("button", { hasText: "Delete" }).click();
      await waitFor(async () => (await messageItems(bob, text).count()) === 0, { message: "bob sees the delete" });
      await alice.context().close();
      await bob.context().close();
    });
  }

  it("removes a room made private from carol's open room list live (an async broadcastsTo), and keeps it on alice's", async () => {
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
    const aliceList = await alice.context().newPage();
    await aliceList.goto(`${base}/`);
    expect(await listed(aliceList)).toBe(1);
    await alice.goto(roomUrl);
    await Promise.all([alice.waitForURL(roomUrl), alice.click("#make-private")]);
    await waitFor(async () => (await listed(carol)) === 0, { message: "the room leaves carol's list" });
    // RoomStream.broadcastsTo awaited the members: alice's own stream got the insert
    await waitFor(async () => (await aliceList.locator(`#rooms > li:has-text("${name}") .private`).count()) === 1, {
      message: "alice's list shows it, now private",
    });
    expect(await listed(aliceList)).toBe(1);
    await alice.context().close();
    await carol.context().close();
  });

  it("shows a row written by psql", async () => {
    const bob = await signIn("bob");
    const id = await roomId("general");
    await bob.goto(`${base}/rooms/${id}`);
    const text = `from psql ${Date.now()}`;
    const result = spawnSync(
      "psql",
      [
        schema.url,
        "-v",
        "ON_ERROR_STOP=1",
        "-q",
        "-c",
        `INSERT INTO "${schema.name}".messages (room_id, user_id, body, created_at) VALUES (${id}, 1, '${text}', now())`,
      ],
      { encoding: "utf8" },
    );
    expect(result.status, result.stderr).toBe(0);
    await waitFor(async () => (await messageItems(bob, text).count()) === 1, { message: "the psql write appears" });
    await bob.context().close();
  });
});
