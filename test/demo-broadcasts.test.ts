import path from "node:path";
import { eq } from "drizzle-orm";
import { assertBroadcasts, assertNoBroadcasts, captureBroadcasts } from "turbocast/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ChatApp, createChatApp } from "../src/app/app.js";
import { memberships, messages, rooms, users } from "../src/app/schema.js";
import { MessageStream } from "../streams/messages.js";
import { RoomStream, UserRoomsStream } from "../streams/rooms.js";
import { closeServer, listen, tempDir } from "./helpers.js";

/**
 * The demo's broadcasts, through turbocast/testing as an app's own tests
 * would use it: the app's real createTurbo, requests over HTTP, no browser.
 */
describe("the chat demo's broadcasts (turbocast/testing)", () => {
  let chat: ChatApp;
  let url: string;
  let tmp: { dir: string; cleanup: () => void };
  const cookies = new Map<string, string>();

  beforeAll(async () => {
    tmp = tempDir("turbocast-demo-broadcasts-");
    chat = await createChatApp({
      dbFile: path.join(tmp.dir, "chat.db"),
      secret: "demo-broadcasts-secret-0123456789abcdef",
    });
    url = (await listen(chat.server)).url;
  });

  afterAll(async () => {
    await chat?.close();
    if (chat) await closeServer(chat.server).catch(() => {});
    tmp?.cleanup();
  });

  async function as(name: string): Promise<string> {
    const known = cookies.get(name);
    if (known) return known;
    const login = await fetch(`${url}/login`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: `name=${name}`,
      redirect: "manual",
    });
    const cookie = login.headers.get("set-cookie")!.split(";")[0]!;
    cookies.set(name, cookie);
    return cookie;
  }

  const post = async (name: string, route: string, form: Record<string, string> = {}) => {
    const res = await fetch(`${url}${route}`, {
      method: "POST",
      headers: { cookie: await as(name), "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(form).toString(),
      redirect: "manual",
    });
    expect(res.status).toBeLessThan(400);
    return res;
  };

  const userId = (name: string) => chat.db.select().from(users).where(eq(users.name, name)).get()!.id;

  it("a posted message is appended to its room's list; an edit replaces it; a delete removes it", async () => {
    await as("alice");
    const room = chat.db
      .insert(rooms)
      .values({ name: "tested", createdBy: userId("alice") })
      .returning()
      .get();
    const [frame] = await assertBroadcasts(turbo(), () => post("alice", `/rooms/${room.id}/messages`, { body: "hi" }), {
      stream: RoomStream.for(room.id),
      frames: [{ action: "append", target: "messages", html: "hi" }],
    });
    const message = chat.db.select().from(messages).where(eq(messages.roomId, room.id)).get()!;
    expect(frame!.html).toContain(`id="message_${message.id}"`);
    expect(frame!.html).toContain('<span class="author">alice</span>');

    await assertBroadcasts(turbo(), () => post("alice", `/messages/${message.id}`, { body: "edited" }), {
      stream: RoomStream.for(room.id),
      frames: [{ action: "replace", target: `message_${message.id}`, html: "edited" }],
    });
    await assertBroadcasts(turbo(), () => post("alice", `/messages/${message.id}/delete`), {
      frames: [{ stream: RoomStream.for(room.id), action: "remove", target: `message_${message.id}` }],
    });
    expect(MessageStream.broadcastsTo).toBeTypeOf("function");
  });

  it("a room made private leaves the public list and enters its members' lists", async () => {
    const alice = userId("alice");
    const room = chat.db.insert(rooms).values({ name: "lounge", createdBy: alice }).returning().get();
    await chat.turbo.feed.drain();
    const frames = await captureBroadcasts(turbo(), () => post("alice", `/rooms/${room.id}/private`));
    expect(frames.map((f) => [f.stream, f.action, f.target])).toEqual([
      // the route makes alice a member first, in the same transaction: MembershipStream's hook inserts the
      // (by then private) room into her list; Turbo replaces an appended element whose id is already there
      [UserRoomsStream.for(alice).name, "append", "rooms"],
      // then RoomStream.broadcastsTo, from the previous row and the new one
      [RoomStream.all().name, "remove", `room_${room.id}`],
      [UserRoomsStream.for(alice).name, "append", "rooms"],
    ]);
    expect(chat.db.select().from(memberships).where(eq(memberships.roomId, room.id)).all()).toHaveLength(1);
    // a private room's messages go to its own stream only
    await assertNoBroadcasts(turbo(), () => post("alice", `/rooms/${room.id}/messages`, { body: "psst" }), {
      stream: RoomStream.all(),
    });
  });

  const turbo = () => chat.turbo;
});
