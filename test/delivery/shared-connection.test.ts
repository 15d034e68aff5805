import WebSocket from "ws";
import { afterEach, describe, expect, it } from "vitest";
import { exceptFrame } from "../../src/delivery/hub.js";
import { pageDigest } from "../../src/delivery/request-context.js";
import { StreamSigner } from "../../src/delivery/stream-source.js";
import {
  LobbyStream,
  RoomStream,
  SECRET,
  type TestApp,
  ThrowingStream,
  VaultStream,
  startApp,
  wsPosition,
} from "./fixture.js";
import { upgradeStatus, waitFor } from "../helpers.js";

let app: TestApp | undefined;
const sockets: WebSocket[] = [];

afterEach(async () => {
  for (const ws of sockets.splice(0)) ws.terminate();
  await app?.close();
  app = undefined;
});

interface Client {
  ws: WebSocket;
  /** Parsed JSON answers. */
  answers: Array<Record<string, unknown>>;
  /** Frames (text messages that are not JSON). */
  frames: string[];
  closed: Promise<{ code: number; reason: string }>;
  send(message: unknown): void;
  /** Waits for the answer of `type` to request `id`. */
  answer(type: string, id: unknown): Promise<Record<string, unknown>>;
}

async function shared(options: { user?: string; origin?: string } = {}): Promise<Client> {
  const url = `${app!.url.replace(/^http/, "ws")}/turbo-streams`;
  const ws = new WebSocket(url, "turbocast.v1", {
    headers: options.user ? { "x-user": options.user } : {},
    ...(options.origin ? { origin: options.origin } : {}),
  });
  sockets.push(ws);
  const answers: Array<Record<string, unknown>> = [];
  const frames: string[] = [];
  ws.on("message", (data, isBinary) => {
    if (isBinary) return;
    const text = data.toString("utf8");
    if (text.startsWith("{")) answers.push(JSON.parse(text));
    else frames.push(text);
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() })),
  );
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("error", reject);
  });
  expect(ws.protocol).toBe("turbocast.v1");
  const client: Client = {
    ws,
    answers,
    frames,
    closed,
    send: (message) => ws.send(typeof message === "string" ? message : JSON.stringify(message)),
    async answer(type, id) {
      let found: Record<string, unknown> | undefined;
      await waitFor(() => (found = answers.find((a) => a.type === type && a.id === id)) !== undefined, {
        message: `a ${type} answer to ${String(id)}`,
      });
      return found!;
    },
  };
  return client;
}

const sign = (name: string) => app!.turbo.signStreamName(name);
const forOf = (frame: string) => /data-turbocast-for="([^"]*)"/.exec(frame)?.[1];
const targetOf = (frame: string) => /target="(\w+)"/.exec(frame)?.[1];

describe("the shared WebSocket connection (control protocol)", () => {
  it("subscribes and unsubscribes by request id, frames marked with the ids they are for", async () => {
    app = await startApp();
    const client = await shared();
    client.send({ type: "subscribe", id: 1, streams: [sign(RoomStream.for(1).name)], after: null });
    await client.answer("subscribed", 1);
    client.send({ type: "subscribe", id: "lobby", streams: [sign(LobbyStream.for().name)] });
    await client.answer("subscribed", "lobby");
    await RoomStream.for(1).remove({ target: "a" });
    await LobbyStream.for().remove({ target: "b" });
    await RoomStream.for(2).remove({ target: "other" });
    await waitFor(() => client.frames.length === 2);
    expect(client.frames.map(targetOf)).toEqual(["a", "b"]);
    expect(client.frames.map(forOf)).toEqual(["1", "lobby"]);
    expect(client.frames[0]).toContain(`data-turbocast-stream="${RoomStream.for(1).name}"`);
    expect(wsPosition(client.frames[0]!)).toMatch(/\.\d+$/);
    expect(app.turbo.hub.size).toBe(2);

    client.send({ type: "unsubscribe", id: 1 });
    await client.answer("unsubscribed", 1);
    await RoomStream.for(1).remove({ target: "gone" });
    await LobbyStream.for().remove({ target: "c" });
    await waitFor(() => client.frames.length === 3);
    expect(targetOf(client.frames[2]!)).toBe("c");
    expect(app.turbo.hub.size).toBe(1);
  });

  it("sends a live frame once for every subscription holding its stream", async () => {
    app = await startApp();
    const client = await shared();
    const room = sign(RoomStream.for(1).name);
    client.send({ type: "subscribe", id: "a", streams: [room] });
    client.send({ type: "subscribe", id: "b", streams: [room, sign(LobbyStream.for().name)] });
    await client.answer("subscribed", "a");
    await client.answer("subscribed", "b");
    await RoomStream.for(1).remove({ target: "both" });
    await LobbyStream.for().remove({ target: "lobby" });
    await waitFor(() => client.frames.length === 2);
    expect(client.frames.map((f) => [targetOf(f), forOf(f)])).toEqual([
      ["both", "a b"],
      ["lobby", "b"],
    ]);
    expect(app.turbo.hub.size).toBe(2);
  });

  it("replays each subscription after its own position, before answering subscribed", async () => {
    app = await startApp();
    const start = await app.turbo.broker.head();
    await RoomStream.for(1).remove({ target: "r1" });
    const middle = await app.turbo.broker.head();
    await RoomStream.for(1).remove({ target: "r2" });
    await LobbyStream.for().remove({ target: "l1" });
    const client = await shared();
    client.send({ type: "subscribe", id: 1, streams: [sign(RoomStream.for(1).name)], after: start });
    await client.answer("subscribed", 1);
    expect(client.frames.map(targetOf)).toEqual(["r1", "r2"]);
    client.send({
      type: "subscribe",
      id: 2,
      streams: [sign(RoomStream.for(1).name), sign(LobbyStream.for().name)],
      after: middle,
    });
    await client.answer("subscribed", 2);
    // its own replay, marked for it alone, though subscription 1 already had r2
    expect(client.frames.slice(2).map((f) => [targetOf(f), forOf(f)])).toEqual([
      ["r2", "2"],
      ["l1", "2"],
    ]);
    const answerIndex = client.answers.findIndex((a) => a.type === "subscribed" && a.id === 2);
    expect(answerIndex).toBeGreaterThan(-1);
  });

  it("skips, for a { toOthers: true } frame, only the subscriptions of the page it names", async () => {
    app = await startApp();
    const client = await shared();
    const lobby = sign(LobbyStream.for().name);
    const acting = "acting-page-id-0123456789";
    client.send({ type: "subscribe", id: "mine", streams: [lobby], page: acting });
    client.send({ type: "subscribe", id: "theirs", streams: [lobby], page: "another-page-id-0123456789" });
    client.send({ type: "subscribe", id: "anon", streams: [lobby] });
    for (const id of ["mine", "theirs", "anon"]) await client.answer("subscribed", id);
    await LobbyStream.for().broadcastRaw(
      exceptFrame('<turbo-stream action="remove" target="others"></turbo-stream>', pageDigest(acting)),
    );
    await LobbyStream.for().remove({ target: "everyone" });
    await waitFor(() => client.frames.length === 2);
    expect(client.frames.map((f) => [targetOf(f), forOf(f)])).toEqual([
      ["others", "theirs anon"],
      ["everyone", "mine theirs anon"],
    ]);
  });

  it("refuses what a new connection would be refused, answering with the request id", async () => {
    app = await startApp();
    const client = await shared();
    const tampered = `${sign(LobbyStream.for().name).slice(0, -2)}AA`;
    client.send({ type: "subscribe", id: "bad", streams: [tampered] });
    expect(await client.answer("refused", "bad")).toEqual({ type: "refused", id: "bad", status: 403 });
    client.send({ type: "subscribe", id: "vault", streams: [sign(VaultStream.for().name)] });
    expect((await client.answer("refused", "vault")).status).toBe(403);
    client.send({ type: "subscribe", id: "private", streams: [sign(RoomStream.for(2).name)] });
    expect((await client.answer("refused", "private")).status).toBe(403);
    client.send({ type: "subscribe", id: "throws", streams: [sign(ThrowingStream.for().name)] });
    expect((await client.answer("refused", "throws")).status).toBe(500);
    // the connection carries on, and the same ids can be used again
    client.send({ type: "subscribe", id: "bad", streams: [sign(LobbyStream.for().name)] });
    await client.answer("subscribed", "bad");
    expect(client.ws.readyState).toBe(WebSocket.OPEN);

    const alice = await shared({ user: "alice" });
    alice.send({ type: "subscribe", id: 7, streams: [sign(RoomStream.for(2).name)] });
    await alice.answer("subscribed", 7);
  });

  it("answers an expired signature with 410 (the client script reloads the page for fresh ones)", async () => {
    app = await startApp({ signatureTtlMs: 60_000 });
    const expired = new StreamSigner({ secret: SECRET, ttlMs: 60_000, now: () => Date.now() - 120_000 }).sign(
      LobbyStream.for().name,
    );
    const client = await shared();
    client.send({ type: "subscribe", id: 1, streams: [expired] });
    expect(await client.answer("refused", 1)).toEqual({ type: "refused", id: 1, status: 410 });
  });

  it("answers malformed messages, unknown types and bad requests with errors, and stays open", async () => {
    app = await startApp();
    const client = await shared();
    const lobby = sign(LobbyStream.for().name);
    client.send("{not json");
    client.send("[1,2]");
    client.send({ type: "subscribe", streams: [lobby] });
    client.send({ type: "subscribe", id: { nested: true }, streams: [lobby] });
    client.send({ type: "hello", id: 5 });
    client.send({ type: "subscribe", id: 6, streams: [] });
    client.send({ type: "subscribe", id: 7, streams: [lobby], after: "not-a-position" });
    client.send({ type: "subscribe", id: 8, streams: [42] });
    client.send({ type: "unsubscribe", id: 9 });
    await waitFor(() => client.answers.length === 9);
    expect(client.answers.map((a) => [a.type, a.id, a.status])).toEqual([
      ["error", null, 400],
      ["error", null, 400],
      ["error", null, 400],
      ["error", null, 400],
      ["error", 5, 400],
      ["error", 6, 400],
      ["error", 7, 400],
      ["error", 8, 400],
      ["error", 9, 404],
    ]);
    for (const answer of client.answers) expect(typeof answer.reason).toBe("string");
    client.send({ type: "subscribe", id: 10, streams: [lobby] });
    await client.answer("subscribed", 10);
    client.send({ type: "subscribe", id: 10, streams: [lobby] });
    expect((await client.answer("error", 10)).reason).toBe("id already in use");
    expect(client.ws.readyState).toBe(WebSocket.OPEN);
  });

  it("enforces the limits: streams per subscription, subscriptions per connection, message size and rate", async () => {
    app = await startApp({ maxStreamsPerSubscription: 2, maxSubscriptionsPerConnection: 2, maxMessagesPerSecond: 50 });
    const client = await shared();
    const lobby = sign(LobbyStream.for().name);
    const room = sign(RoomStream.for(1).name);
    client.send({ type: "subscribe", id: 1, streams: [lobby, room, sign(RoomStream.for(3).name)] });
    expect((await client.answer("error", 1)).status).toBe(400);
    client.send({ type: "subscribe", id: 2, streams: [lobby] });
    client.send({ type: "subscribe", id: 3, streams: [room] });
    client.send({ type: "subscribe", id: 4, streams: [room] });
    expect((await client.answer("error", 4)).status).toBe(429);
    await client.answer("subscribed", 2);
    await client.answer("subscribed", 3);
    // room again once one is unsubscribed
    client.send({ type: "unsubscribe", id: 2 });
    client.send({ type: "subscribe", id: 4, streams: [room] });
    await client.answer("subscribed", 4);
    await app.close();

    app = await startApp({ maxMessageBytes: 512 });
    const big = await shared();
    big.send({ type: "subscribe", id: 1, streams: ["x".repeat(600)] });
    expect((await big.closed).code).toBe(1009);

    app = await startAppAgain({ maxMessagesPerSecond: 2 });
    const fast = await shared();
    for (let i = 0; i < 10; i++) fast.send({ type: "unsubscribe", id: i });
    const closed = await fast.closed;
    expect(closed.code).toBe(1008);
    expect(fast.answers.length).toBe(4); // the burst (twice the rate) was answered
  });

  it("closes on a binary message with 1003", async () => {
    app = await startApp();
    const client = await shared();
    client.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    expect((await client.closed).code).toBe(1003);
    await waitFor(() => app!.turbo.hub.size === 0);
  });

  it("checks the Origin at the upgrade", async () => {
    app = await startApp();
    const url = `${app.url.replace(/^http/, "ws")}/turbo-streams`;
    const status = await new Promise<number>((resolve) => {
      const ws = new WebSocket(url, "turbocast.v1", { origin: "https://evil.example" });
      ws.once("unexpected-response", (_req, res) => {
        resolve(res.statusCode ?? 0);
        res.resume();
      });
      ws.on("error", () => {});
      ws.once("open", () => {
        resolve(101);
        ws.terminate();
      });
    });
    expect(status).toBe(403);
    // without the subprotocol, a URL without streams is still a bad request
    expect(await upgradeStatus(url)).toBe(400);
  });

  it("ends every subscription of a connection when it closes", async () => {
    app = await startApp();
    const client = await shared();
    client.send({ type: "subscribe", id: 1, streams: [sign(LobbyStream.for().name)] });
    client.send({ type: "subscribe", id: 2, streams: [sign(RoomStream.for(1).name)] });
    await client.answer("subscribed", 1);
    await client.answer("subscribed", 2);
    expect(app.turbo.hub.size).toBe(2);
    client.ws.close();
    await waitFor(() => app!.turbo.hub.size === 0);
  });
});

async function startAppAgain(options: Parameters<typeof startApp>[0]): Promise<TestApp> {
  await app?.close();
  app = await startApp(options);
  return app;
}
