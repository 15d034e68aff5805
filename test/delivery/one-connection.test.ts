import { afterEach, describe, expect, it } from "vitest";
import { exceptFrame } from "../../src/delivery/hub.js";
import { pageDigest } from "../../src/delivery/request-context.js";
import { LobbyStream, RoomStream, type TestApp, startApp } from "./fixture.js";
import { openSse, unescapeHtml, waitFor } from "../helpers.js";

let app: TestApp | undefined;
const closers: Array<() => void> = [];

afterEach(async () => {
  for (const close of closers.splice(0)) close();
  await app?.close();
  app = undefined;
});

const targetOf = (frame: string) => /target="(\w+)"/.exec(frame)?.[1];
const srcs = (html: string) =>
  [...html.matchAll(/<turbo-stream-source src="([^"]*)"/g)].map((m) => unescapeHtml(m[1]!));
const streamCount = (src: string) => new URL(src, "http://x").searchParams.getAll("s").length;

describe("one request, each stream once", () => {
  it("leaves out of a later tag the streams an earlier tag of the same request named", async () => {
    app = await startApp();
    const turbo = app.turbo;
    app.app.get("/layout-and-view", (_req, res) => {
      const layout = turbo.streamSource(res, ["lobby"]);
      const view = turbo.streamSource(res, [RoomStream.for(1), "lobby"]);
      const again = turbo.streamSource(res, ["lobby", RoomStream.for(1)], { transport: "websocket" });
      res.type("html").send(`${layout}|${view}|${again}`);
    });
    const html = await (await fetch(`${app.url}/layout-and-view`)).text();
    const [layout, view, again] = html.split("|");
    expect(srcs(layout!).map(streamCount)).toEqual([1]);
    expect(srcs(view!).map(streamCount)).toEqual([1]);
    expect(again).toBe("");
    // another request starts afresh
    const second = await (await fetch(`${app.url}/layout-and-view`)).text();
    expect(srcs(second).length).toBe(2);
  });
});

describe("the union SSE URL of the client script", () => {
  it("replays each name after its own position, marks each frame's stream, and resumes every stream from one Last-Event-ID", async () => {
    app = await startApp();
    const room = app.turbo.signStreamName(RoomStream.for(1).name);
    const lobby = app.turbo.signStreamName(LobbyStream.for().name);
    const start = await app.turbo.broker.head();
    await RoomStream.for(1).remove({ target: "r1" });
    await LobbyStream.for().remove({ target: "l1" });
    const middle = await app.turbo.broker.head();
    await RoomStream.for(1).remove({ target: "r2" });
    await LobbyStream.for().remove({ target: "l2" });

    // the room rendered at `start`, the lobby at `middle`
    const url = `${app.url}/turbo-streams?s=${room}~${start}&s=${lobby}~${middle}`;
    const first = openSse(url);
    closers.push(() => first.source.close());
    await waitFor(() => first.messages.length === 3);
    expect(first.messages.map((m) => targetOf(m.data))).toEqual(["r1", "r2", "l2"]);
    expect(first.messages[0]!.data).toContain(`data-turbocast-stream="${RoomStream.for(1).name}"`);
    // ids in position order: the last one resumes both streams
    const last = first.messages[2]!.id;
    first.source.close();

    await RoomStream.for(1).remove({ target: "r3" });
    await LobbyStream.for().remove({ target: "l3" });
    const resumed = openSse(url, { headers: { "Last-Event-ID": last } });
    closers.push(() => resumed.source.close());
    await waitFor(() => resumed.messages.length === 2);
    expect(resumed.messages.map((m) => targetOf(m.data))).toEqual(["r3", "l3"]);
    await LobbyStream.for().remove({ target: "live" });
    await waitFor(() => resumed.messages.length === 3);
    expect(targetOf(resumed.messages[2]!.data)).toBe("live");
  });

  it("replays a stream two names give for the older of their positions, once", async () => {
    app = await startApp();
    const lobby = app.turbo.signStreamName(LobbyStream.for().name);
    const start = await app.turbo.broker.head();
    await LobbyStream.for().remove({ target: "a" });
    const middle = await app.turbo.broker.head();
    await LobbyStream.for().remove({ target: "b" });
    const sse = openSse(`${app.url}/turbo-streams?s=${lobby}~${middle}&s=${lobby}~${start}`);
    closers.push(() => sse.source.close());
    await waitFor(() => sse.messages.length === 2);
    await LobbyStream.for().remove({ target: "c" });
    await waitFor(() => sse.messages.length === 3);
    expect(sse.messages.map((m) => targetOf(m.data))).toEqual(["a", "b", "c"]);
  });

  it("skips the { toOthers: true } frames of the page its p= names", async () => {
    app = await startApp();
    const lobby = app.turbo.signStreamName(LobbyStream.for().name);
    const head = await app.turbo.broker.head();
    const page = "union-page-id-0123456789";
    const sse = openSse(`${app.url}/turbo-streams?s=${lobby}~${head}&p=${page}`);
    closers.push(() => sse.source.close());
    await sse.opened;
    await LobbyStream.for().broadcastRaw(
      exceptFrame('<turbo-stream action="remove" target="mine"></turbo-stream>', pageDigest(page)),
    );
    await LobbyStream.for().remove({ target: "others" });
    await waitFor(() => sse.messages.length === 1);
    expect(targetOf(sse.messages[0]!.data)).toBe("others");
  });

  it("refuses a union URL with after=, a malformed position, or more names than a connection may hold", async () => {
    app = await startApp({ maxStreamsPerSubscription: 2, maxSubscriptionsPerConnection: 2 });
    const lobby = app.turbo.signStreamName(LobbyStream.for().name);
    const head = await app.turbo.broker.head();
    const status = async (query: string) =>
      (await fetch(`${app!.url}/turbo-streams?${query}`, { headers: { accept: "text/event-stream" } })).status;
    expect(await status(`s=${lobby}~${head}&after=${head}`)).toBe(400);
    expect(await status(`s=${lobby}~nonsense`)).toBe(400);
    expect(await status(Array.from({ length: 5 }, () => `s=${lobby}~${head}`).join("&"))).toBe(400);
    const ok = await fetch(
      `${app.url}/turbo-streams?${Array.from({ length: 4 }, () => `s=${lobby}~${head}`).join("&")}`,
      {
        headers: { accept: "text/event-stream" },
      },
    );
    expect(ok.status).toBe(200);
    await ok.body?.cancel();
  });
});
