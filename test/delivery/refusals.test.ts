import http from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import { MAX_TOKEN_LENGTH, StreamSigner } from "../../src/delivery/stream-source.js";
import { LobbyStream, RoomStream, SECRET, ThrowingStream, type TestApp, VaultStream, startApp } from "./fixture.js";
import { openSse, openWs, toWs, upgradeStatus, waitFor } from "../helpers.js";

let app: TestApp | undefined;

afterEach(async () => {
  await app?.close();
  app = undefined;
});

/** Status and body of an SSE request to `pathAndQuery`. */
async function sseStatus(
  pathAndQuery: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string }> {
  const controller = new AbortController();
  const response = await fetch(`${app!.url}${pathAndQuery}`, {
    headers: { Accept: "text/event-stream", ...headers },
    signal: controller.signal,
  });
  const body = response.status === 200 ? "" : await response.text();
  controller.abort();
  return { status: response.status, body };
}

/** Both transports' answers to one subscription URL. */
async function statuses(
  pathAndQuery: string,
  headers: Record<string, string> = {},
): Promise<{ sse: number; ws: number }> {
  const { status } = await sseStatus(pathAndQuery, headers);
  const ws = await upgradeStatus(toWs(`${app!.url}${pathAndQuery}`), { headers });
  return { sse: status, ws };
}

const token = (name: string): string => app!.turbo.signStreamName(name);
const query = (...tokens: string[]): string =>
  `/turbo-streams?${tokens.map((t) => `s=${encodeURIComponent(t)}`).join("&")}`;

describe("refused subscriptions", () => {
  it("accepts a well-signed subscription on both transports (the baseline)", async () => {
    app = await startApp();
    expect(await statuses(query(token(RoomStream.for(1).name)))).toEqual({ sse: 200, ws: 101 });
  });

  it("refuses a tampered, truncated or foreign signature with the same 403", async () => {
    app = await startApp();
    const good = token(RoomStream.for(1).name);
    const flip = (c: string): string => (c === "A" ? "B" : "A");
    const tampered = good.slice(0, -10) + flip(good.at(-10)!) + good.slice(-9);
    const truncated = good.slice(0, -5);
    const foreign = new StreamSigner({ secret: "another-secret-of-enough-length-0123456789" }).sign(
      RoomStream.for(1).name,
    );
    const answers = [];
    for (const bad of [tampered, truncated, foreign, "garbage", "a.b.c"]) {
      expect(await statuses(query(bad))).toEqual({ sse: 403, ws: 403 });
      answers.push((await sseStatus(query(bad))).body);
    }
    expect(new Set(answers)).toEqual(new Set(["Forbidden"]));
    // the server says why, once per kind of refusal (ten bad requests above, one line)
    const said = app.logger.entries.filter((e) => e.message.startsWith("subscription refused"));
    expect(said).toEqual([
      {
        level: "info",
        message: "subscription refused (403): bad signature (like refusals are logged at most once a minute)",
      },
    ]);
  });

  it("never lets the signature of one stream open another", async () => {
    app = await startApp();
    const [, , macOfRoom1] = token(RoomStream.for(1).name).split(".");
    const [nameOfRoom3, expiry] = token(RoomStream.for(3).name).split(".");
    const spliced = `${nameOfRoom3}.${expiry}.${macOfRoom1}`;
    expect(await statuses(query(spliced))).toEqual({ sse: 403, ws: 403 });
    // one bad name spoils a subscription that also holds a good one
    expect(await statuses(query(token(RoomStream.for(1).name), spliced))).toEqual({ sse: 403, ws: 403 });
  });

  it("refuses the whole subscription when one stream's userPassesTest fails (sync or async)", async () => {
    app = await startApp();
    const privateRoom = token(RoomStream.for(2).name);
    expect(await statuses(query(privateRoom))).toEqual({ sse: 403, ws: 403 });
    expect(await statuses(query(privateRoom), { "x-user": "bob" })).toEqual({ sse: 403, ws: 403 });
    expect(await statuses(query(privateRoom), { "x-user": "alice" })).toEqual({ sse: 200, ws: 101 });
    expect(await statuses(query(token(LobbyStream.for().name), token(VaultStream.for().name)))).toEqual({
      sse: 403,
      ws: 403,
    });
    // a row that does not exist (the async test loads it) is refused like the rest
    expect(await statuses(query(token(RoomStream.for(999).name)))).toEqual({ sse: 403, ws: 403 });
  });

  it("refuses a signed name that no class serves with the same 403", async () => {
    app = await startApp();
    expect(await statuses(query(token("named:no-such-stream")))).toEqual({ sse: 403, ws: 403 });
    expect(await statuses(query(token("row:rooms:not-a-number")))).toEqual({ sse: 403, ws: 403 });
    expect((await sseStatus(query(token("named:no-such-stream")))).body).toBe("Forbidden");
  });

  it("refuses an expired signature", async () => {
    let now = Date.now();
    const signer = new StreamSigner({ secret: SECRET, ttlMs: 60_000, now: () => now });
    app = await startApp({ signatureTtlMs: 60_000 });
    const expiring = signer.sign(RoomStream.for(1).name);
    expect(await statuses(query(expiring))).toEqual({ sse: 200, ws: 101 });
    now -= 120_000;
    const expired = signer.sign(RoomStream.for(1).name);
    expect(await statuses(query(expired))).toEqual({ sse: 200, ws: 403 });
    // SSE: one refresh frame (the reloaded page carries fresh signatures) instead of a
    // status that would make EventSource give up for good
    const response = await fetch(`${app.url}${query(expired)}`, { headers: { Accept: "text/event-stream" } });
    expect(await response.text()).toBe(`retry: 1000\n\ndata: <turbo-stream action="refresh"></turbo-stream>\n\n`);
    // a forged expiry is still a bad signature
    const [name, , mac] = expired.split(".");
    expect(await statuses(query(`${name}.${(Math.floor(Date.now() / 1000) + 999).toString(36)}.${mac}`))).toEqual({
      sse: 403,
      ws: 403,
    });
  });

  it("answers a throwing authenticate or userPassesTest as a transient failure the page retries", async () => {
    app = await startApp({
      authenticate: (req) => {
        if (req.get("x-user") === "boom") throw new Error("session store down");
        return null;
      },
    });
    const src = query(token(ThrowingStream.for().name));
    for (const [url, headers] of [
      [query(token(RoomStream.for(1).name)), { "x-user": "boom" }],
      [src, {}],
    ] as const) {
      const response = await fetch(`${app.url}${url}`, { headers: { Accept: "text/event-stream", ...headers } });
      expect(response.status).toBe(200);
      expect(await response.text()).toBe("retry: 5000\n\n");
    }
    expect(await upgradeStatus(toWs(`${app.url}${src}`))).toBe(500);
    expect(app.logger.entries.map((e) => e.message).join("\n")).toMatch(
      /authenticate\(req\) threw[\s\S]*userPassesTest of named:throwing threw/,
    );
  });

  it("logs a throwing authenticate or userPassesTest once, however many requests hit it", async () => {
    app = await startApp({
      authenticate: (req) => {
        if (req.get("x-user") === "boom") throw new Error("session store down");
        return null;
      },
    });
    const throwing = query(token(ThrowingStream.for().name));
    for (let i = 0; i < 5; i++) {
      expect((await sseStatus(throwing)).status).toBe(200);
      expect((await sseStatus(query(token(RoomStream.for(1).name)), { "x-user": "boom" })).status).toBe(200);
      expect(await upgradeStatus(toWs(`${app.url}${throwing}`))).toBe(500);
    }
    const lines = app.logger.entries.filter((e) => e.level !== "info");
    expect(lines.map((e) => [e.level, e.message])).toEqual([
      ["warn", "userPassesTest of named:throwing threw; the subscription is answered as a server error"],
      ["error", "authenticate(req) threw; the subscription is refused with 500"],
    ]);
    // the first one in full, with its stack
    expect(lines[0]?.details?.error).toBeInstanceOf(Error);
  });

  it("answers malformed queries with 400", async () => {
    app = await startApp();
    const good = token(RoomStream.for(1).name);
    expect(await statuses("/turbo-streams")).toEqual({ sse: 400, ws: 400 });
    expect(await statuses("/turbo-streams?s=")).toEqual({ sse: 400, ws: 400 });
    expect(await statuses(`${query(good)}&after=yesterday`)).toEqual({ sse: 400, ws: 400 });
    expect(await statuses(`${query(good)}&after=x.1&after=x.2`)).toEqual({ sse: 400, ws: 400 });
    expect(await statuses(`/turbo-streams?s=${"A".repeat(MAX_TOKEN_LENGTH + 1)}`)).toEqual({ sse: 400, ws: 400 });
  });

  it("answers too many streams with 400 and an over-long URL with 414", async () => {
    app = await startApp({ maxStreamsPerSubscription: 3, maxUrlLength: 1024 });
    const tokens = [1, 2, 3, 4].map((id) => token(RoomStream.for(id).name));
    expect(await statuses(query(...tokens))).toEqual({ sse: 400, ws: 400 });
    expect(await statuses(`${query(tokens[0]!)}&pad=${"x".repeat(1024)}`)).toEqual({ sse: 414, ws: 414 });
  });

  it("answers methods other than GET and HEAD with 405 and a non-SSE Accept with 406", async () => {
    app = await startApp();
    const url = `${app.url}${query(token(RoomStream.for(1).name))}`;
    const post = await fetch(url, { method: "POST" });
    expect(post.status).toBe(405);
    expect(post.headers.get("allow")).toBe("GET, HEAD");
    expect((await fetch(url, { headers: { Accept: "text/html" } })).status).toBe(406);
  });

  it("parses Accept as media ranges: case-insensitive, wildcards and parameters understood, q=0 refuses", async () => {
    app = await startApp();
    const path = query(token(RoomStream.for(1).name));
    const statusFor = async (accept: string): Promise<number> => (await sseStatus(path, { Accept: accept })).status;
    for (const accept of [
      "text/event-stream",
      "TEXT/EVENT-STREAM",
      "Text/Event-Stream ; q=0.5",
      "text/event-stream; charset=UTF-8",
      "*/*",
      "text/*",
      "text/html, */*;q=0.1",
    ]) {
      expect({ accept, status: await statusFor(accept) }).toEqual({ accept, status: 200 });
    }
    for (const accept of [
      "text/event-streamx",
      "text/html",
      "image/*",
      "garbage",
      "text/event-stream;q=0",
      "text/event-stream;q=0.0, */*",
      "*/*;q=0",
      "text/*;q=0, */*",
      "text/event-stream; charset=latin1",
    ]) {
      expect({ accept, status: await statusFor(accept) }).toEqual({ accept, status: 406 });
    }
  });

  it("answers an upgrade that is not a WebSocket handshake with 400", async () => {
    app = await startApp();
    const path = query(token(RoomStream.for(1).name));
    const rawUpgrade = (headers: Record<string, string>): Promise<number> =>
      new Promise((resolve, reject) => {
        const req = http.request(`${app!.url}${path}`, { headers: { Connection: "Upgrade", ...headers } });
        req.on("response", (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        req.on("upgrade", (res, socket) => {
          socket.destroy();
          resolve(res.statusCode ?? 0);
        });
        req.on("error", reject);
        req.end();
      });
    expect(await rawUpgrade({ Upgrade: "h2c" })).toBe(400);
    // a WebSocket upgrade without Sec-WebSocket-Key: ws refuses the handshake
    expect(await rawUpgrade({ Upgrade: "websocket", "Sec-WebSocket-Version": "13" })).toBe(400);
  });

  it("answers Upgrade: websocket without Connection: Upgrade with 400 and no warning when turbo.listen was called", async () => {
    app = await startApp();
    const url = `${app.url}${query(token(RoomStream.for(1).name))}`;
    const withoutConnectionUpgrade = (): Promise<number> =>
      new Promise((resolve, reject) => {
        http
          .get(url, { headers: { Upgrade: "websocket", "Sec-WebSocket-Version": "13" } }, (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          })
          .on("error", reject);
      });
    for (let i = 0; i < 3; i++) expect(await withoutConnectionUpgrade()).toBe(400);
    expect(app.logger.entries.filter((e) => e.level !== "info")).toEqual([]);
  });

  it("warns once, not per request, when WebSocket upgrades reach Express because turbo.listen was not called", async () => {
    app = await startApp({ listen: false });
    const url = toWs(`${app.url}${query(token(RoomStream.for(1).name))}`);
    for (let i = 0; i < 3; i++) expect(await upgradeStatus(url)).toBe(400);
    expect(app.logger.entries.filter((e) => e.level !== "info").map((e) => e.message)).toEqual([
      "a WebSocket upgrade on /turbo-streams reached Express: call turbo.listen(server)",
    ]);
  });

  it("keeps serving after every kind of bad input, and logs no error", async () => {
    app = await startApp();
    const good = token(RoomStream.for(1).name);
    await statuses("/turbo-streams?s=%E0%A4%A");
    await statuses(`${query(good)}&after=${"9".repeat(80)}`);
    await statuses(query(good), { "Last-Event-ID": "\u00ff\u00fe" });
    const client = openSse(`${app.url}${query(good)}`);
    const ws = await openWs(toWs(`${app.url}${query(good)}`));
    try {
      await client.opened;
      await RoomStream.for(1).remove({ target: "still_alive" });
      await waitFor(() => client.messages.length === 1 && ws.messages.length === 1);
    } finally {
      client.source.close();
      ws.ws.terminate();
    }
    expect(app.logger.entries.filter((e) => e.level === "error")).toEqual([]);
  });
});
