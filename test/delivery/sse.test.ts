import http from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import { LobbyStream, RoomStream, type TestApp, startApp } from "./fixture.js";
import { openSse, waitFor } from "../helpers.js";

let app: TestApp | undefined;
const sources: Array<{ close(): void }> = [];

afterEach(async () => {
  for (const source of sources.splice(0)) source.close();
  await app?.close();
  app = undefined;
});

function track<T extends { source: { close(): void } }>(client: T): T {
  sources.push(client.source);
  return client;
}

/** Reads a raw SSE response until `until` matches what arrived. */
function rawSse(
  url: string,
  until: RegExp,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers: { Accept: "text/event-stream", ...headers } }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      const done = (): void => {
        req.destroy();
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
      };
      res.on("data", (chunk: string) => {
        body += chunk;
        if (until.test(body)) done();
      });
      res.on("end", done);
    });
    req.on("error", reject);
  });
}

describe("SSE subscriptions", () => {
  it("delivers a Drizzle write to an SSE subscriber", async () => {
    app = await startApp();
    const src = await app.pageSrc("/rooms/1");
    expect(src.startsWith("/turbo-streams?")).toBe(true);
    const client = track(openSse(`${app.url}${src}`));
    await client.opened;
    const response = await fetch(`${app.url}/rooms/1/messages`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ body: "hello <world>" }),
    });
    expect(response.status).toBe(201);
    await waitFor(() => client.messages.length === 1);
    expect(client.messages[0]!.data).toBe(
      '<turbo-stream action="append" target="messages"><template><p id="message_1">hello &lt;world&gt;</p></template></turbo-stream>',
    );
    expect(client.messages[0]!.id).toMatch(/^[A-Za-z0-9_-]+\.\d+$/);
  });

  it("sends the event-stream headers, retry and heartbeat comments", async () => {
    app = await startApp({ heartbeatMs: 30, retryMs: 1234 });
    const src = await app.pageSrc("/rooms/1");
    const { status, headers, body } = await rawSse(`${app.url}${src}`, /: heartbeat\n\n/);
    expect(status).toBe(200);
    expect(headers["content-type"]).toBe("text/event-stream; charset=utf-8");
    expect(headers["cache-control"]).toBe("no-cache, no-transform");
    expect(headers["x-accel-buffering"]).toBe("no");
    expect(body.startsWith("retry: 1234\n\n")).toBe(true);
    expect(body).toContain(": heartbeat\n\n");
  });

  it("carries several streams on one connection, and only those", async () => {
    app = await startApp();
    const src = await app.pageSrc("/rooms/1");
    const client = track(openSse(`${app.url}${src}`));
    await client.opened;
    await RoomStream.for(1).remove({ target: "a" });
    await RoomStream.for(3).remove({ target: "not-mine" });
    await LobbyStream.for().remove({ target: "b" });
    await RoomStream.for(1).remove({ target: "c" });
    await waitFor(() => client.messages.length === 3);
    expect(client.messages.map((m) => /target="(\w+)"/.exec(m.data)?.[1])).toEqual(["a", "b", "c"]);
  });

  it("replays frames published between the page's render and its subscription", async () => {
    app = await startApp();
    const src = await app.pageSrc("/rooms/1");
    for (let i = 0; i < 3; i++) await RoomStream.for(1).remove({ target: `early_${i}` });
    const client = track(openSse(`${app.url}${src}`));
    await client.opened;
    await RoomStream.for(1).remove({ target: "late" });
    await waitFor(() => client.messages.length === 4);
    expect(client.messages.map((m) => /target="(\w+)"/.exec(m.data)?.[1])).toEqual([
      "early_0",
      "early_1",
      "early_2",
      "late",
    ]);
  });

  it("resumes with Last-Event-ID after a forced disconnect: all 100 missed frames, in order, exactly once", async () => {
    app = await startApp({ retryMs: 10 });
    const src = await app.pageSrc("/rooms/1");
    // frames before the subscription: replayed from the URL position on the first connect only
    for (let i = 0; i < 5; i++) await RoomStream.for(1).remove({ target: `before_${i}` });
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const client = track(openSse(`${app.url}${src}`, { beforeFetch: (attempt) => (attempt === 2 ? gate : undefined) }));
    await client.opened;
    await waitFor(() => client.messages.length === 5);

    // cut the connection from the server side; the client's reconnect waits at the gate
    for (const socket of app.sockets) socket.destroy();
    await waitFor(() => client.attempts() === 2);
    for (let i = 0; i < 100; i++) await RoomStream.for(1).remove({ target: `missed_${i}` });
    release();

    await waitFor(() => client.messages.length >= 105, { timeoutMs: 10_000 });
    await RoomStream.for(1).remove({ target: "after" });
    await waitFor(() => client.messages.length >= 106);
    const targets = client.messages.map((m) => /target="(\w+)"/.exec(m.data)?.[1]);
    expect(targets).toEqual([
      ...Array.from({ length: 5 }, (_, i) => `before_${i}`),
      ...Array.from({ length: 100 }, (_, i) => `missed_${i}`),
      "after",
    ]);
    // the reconnect asked with the id of the last frame it had, which won over the older URL position
    expect(client.lastEventIds[1]).toBe(client.messages[4]!.id);
    const ids = client.messages.map((m) => m.id);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it("lets Last-Event-ID win over the position in the URL", async () => {
    app = await startApp();
    const src = await app.pageSrc("/rooms/1");
    const published = [];
    for (let i = 0; i < 5; i++) published.push(await RoomStream.for(1).remove({ target: `f${i}` }));
    const client = track(openSse(`${app.url}${src}`, { headers: { "Last-Event-ID": published[2]!.position } }));
    await client.opened;
    await waitFor(() => client.messages.length === 2);
    expect(client.messages.map((m) => m.id)).toEqual([published[3]!.position, published[4]!.position]);
  });

  it("sends one refresh frame for a position older than the retained history", async () => {
    app = await startApp({ history: { frames: 5, ageMs: 0 } });
    const src = await app.pageSrc("/rooms/1");
    for (let i = 0; i < 20; i++) await RoomStream.for(1).remove({ target: `gone_${i}` });
    const client = track(openSse(`${app.url}${src}`));
    await client.opened;
    await waitFor(() => client.messages.length === 1);
    expect(client.messages[0]!.data).toBe('<turbo-stream action="refresh"></turbo-stream>');
    await RoomStream.for(1).remove({ target: "live" });
    await waitFor(() => client.messages.length === 2);
    expect(client.messages[1]!.data).toContain('target="live"');
  });

  it("answers a garbage Last-Event-ID with one refresh frame, then goes live", async () => {
    app = await startApp();
    const src = await app.pageSrc("/rooms/1");
    await RoomStream.for(1).remove({ target: "before" });
    const client = track(openSse(`${app.url}${src}`, { headers: { "Last-Event-ID": "not a position at all" } }));
    await client.opened;
    await waitFor(() => client.messages.length === 1);
    expect(client.messages[0]!.data).toBe('<turbo-stream action="refresh"></turbo-stream>');
    await RoomStream.for(1).remove({ target: "live" });
    await waitFor(() => client.messages.length === 2);
    expect(client.messages[1]!.data).toContain('target="live"');
  });

  it("keeps multi-line HTML intact: one data: line per line", async () => {
    app = await startApp();
    const src = await app.pageSrc("/lobby");
    const client = track(openSse(`${app.url}${src}`));
    await client.opened;
    const html = "<pre>\n  indented\n\n\tafter a blank line\n</pre>\n<p>data: not a field</p>";
    const frame = `<turbo-stream action="append" target="log"><template>${html}</template></turbo-stream>`;
    await LobbyStream.for().broadcastRaw(frame);
    // CR and CRLF end lines in SSE too: they arrive as LF
    await LobbyStream.for().broadcastRaw(frame.replace(/\n/g, "\r\n"));
    await waitFor(() => client.messages.length === 2);
    expect(client.messages[0]!.data).toBe(frame);
    expect(client.messages[1]!.data).toBe(frame);
    const raw = await rawSse(`${app.url}${src.replace(/&after=[^&]*/, "")}`, /not a field/, {
      "Last-Event-ID": client.messages[0]!.id.replace(/\.\d+$/, ".0"),
    });
    expect(raw.body).toContain("<template><pre>\ndata:   indented\ndata: \ndata: \tafter a blank line\n");
    expect(raw.body).not.toMatch(/^event:/m);
  });
});
