import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, expect } from "vitest";
import type { ChatApp } from "../../src/app/app.js";
import { closeServer, listen, waitFor as waitForOnce } from "../helpers.js";
import { launchChromium } from "./browser.js";

/** The shared waitFor with a longer default: a browser on a CI machine busy with other test files can take seconds per step. */
export const waitFor: typeof waitForOnce = (check, options = {}) =>
  waitForOnce(check, { timeoutMs: 15_000, ...options });

/** The two transports, each with a seeded room whose page uses it. */
export const TRANSPORTS = [
  ["Server-Sent Events", "general"],
  ["WebSocket", "random"],
] as const;

/** The messages of a room page whose text contains `text`. */
export const messageItems = (page: Page, text: string) => page.locator("#messages > li", { hasText: text });

/** The chat app on port 0 and Chromium, for the tests of the enclosing describe. */
export interface ChatInBrowser {
  readonly chat: ChatApp;
  /** http://127.0.0.1:<port> */
  readonly base: string;
  /** A new browser context signed in as `name`, on the room list. */
  signIn(name: string): Promise<Page>;
  /** The id of the seeded room called `name`. */
  roomId(name: string): Promise<number>;
}

/**
 * Starts the chat (`start`) and Chromium before the enclosing describe's
 * tests, and closes both, every browser context and `cleanup` after them.
 */
export function chatInBrowser(setup: {
  start(): Promise<ChatApp>;
  roomId(chat: ChatApp, name: string): Promise<number> | number;
  cleanup?(): Promise<void> | void;
}): ChatInBrowser {
  let chat: ChatApp | undefined;
  let base = "";
  let browser: Browser | undefined;
  const contexts: BrowserContext[] = [];

  beforeAll(async () => {
    chat = await setup.start();
    base = (await listen(chat.server)).url;
    browser = await launchChromium();
  });

  afterAll(async () => {
    for (const context of contexts) await context.close().catch(() => {});
    await browser?.close();
    await chat?.close();
    if (chat) await closeServer(chat.server).catch(() => {});
    await setup.cleanup?.();
  });

  return {
    get chat() {
      return chat!;
    },
    get base() {
      return base;
    },
    async signIn(name) {
      const context = await browser!.newContext();
      contexts.push(context);
      const page = await context.newPage();
      page.on("pageerror", (error) => console.error(`[${name}] page error:`, error));
      await page.goto(`${base}/login`);
      await page.fill("input[name=name]", name);
      await Promise.all([page.waitForURL(`${base}/`), page.click("button[type=submit]")]);
      expect(await page.locator("#current-user").textContent()).toBe(name);
      return page;
    },
    roomId: async (name) => setup.roomId(chat!, name),
  };
}

/**
 * Posts a message and waits until the page has its own copy and a fresh
 * form: text typed before the previous post's response replaced the form
 * would be lost with it.
 */
export async function send(page: Page, body: string): Promise<void> {
  await page.fill("#new_message input[name=body]", body);
  await page.press("#new_message input[name=body]", "Enter");
  await waitFor(
    async () =>
      (await page.inputValue("#new_message input[name=body]")) === "" && (await messageItems(page, body).count()) >= 1,
    { message: `the post of ${JSON.stringify(body)} went through` },
  );
}

/** Alice posts, edits and deletes a message in `room`; bob, in the same room over `label`, sees each step. */
export async function deliverMessageEditAndDelete(
  harness: ChatInBrowser,
  label: (typeof TRANSPORTS)[number][0],
  room: string,
): Promise<void> {
  const { base } = harness;
  const alice = await harness.signIn("alice");
  const bob = await harness.signIn("bob");
  const id = await harness.roomId(room);
  await alice.goto(`${base}/rooms/${id}`);
  await bob.goto(`${base}/rooms/${id}`);
  expect(await bob.locator("#transport").textContent()).toBe(label === "WebSocket" ? "WebSocket" : "SSE");

  const text = `hello over ${label} ${Date.now()}`;
  await send(alice, text);
  await waitFor(async () => (await messageItems(bob, text).count()) === 1, { message: "bob sees alice's message" });
  // the broadcast partial's author comes from MessageStream.locals, an awaited query
  expect(await messageItems(bob, text).locator(".author").textContent()).toBe("alice");
  // the form posts through Turbo: no full reload, the composer is cleared
  await waitFor(async () => (await alice.inputValue("#new_message input[name=body]")) === "");
  await waitFor(async () => (await messageItems(alice, text).count()) === 1);

  await messageItems(alice, text).locator("a", { hasText: "Edit" }).click();
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
}

/**
 * Alice creates a public room that carol's open room list shows, then makes
 * it private: it leaves carol's list live (RoomStream's broadcastsTo, async
 * on PostgreSQL) and stays, marked private, on alice's own list in a second tab.
 */
export async function makeListedRoomPrivate(harness: ChatInBrowser): Promise<void> {
  const { base } = harness;
  const alice = await harness.signIn("alice");
  const carol = await harness.signIn("carol");
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
}
