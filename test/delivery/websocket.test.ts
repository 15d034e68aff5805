import WebSocket from "ws";
import { afterEach, describe, expect, it } from "vitest";
import { LobbyStream, RoomStream, type TestApp, startApp, wsPosition } from "./fixture.js";
import { openWs, upgradeStatus, waitFor } from "../helpers.js";

let app: TestApp | undefined;
const sockets: WebSocket[] = [];

afterEach(async () => {
  for (const ws of sockets.splice(0)) ws.terminate();
  await app?.close();
  app = undefined;
});

async function connect(url: string, options: Parameters<typeof openWs>[1] = {}) {
  const client = await openWs(url, options);
  sockets.push(client.ws);
  return client;
}

const targetOf = (message: string): string | undefined => /target="(\w+)"/.exec(message)?.[1];

describe("WebSocket subscriptions", () => {
  it("delivers a Drizzle write as one text message carrying its position", async () => {
    app = await startApp();
    const src = await app.pageSrc("/rooms/1?transport=websocket");
    expect(src.startsWith(`ws://127.0.0.1:${app.port}/turbo-streams?`)).toBe(true);
    const client = await connect(src);
    const response = await fetch(`${app.url}/rooms/1/messages`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ body: "over the socket" }),
    });
    const message = (await response.json()) as { id: number };
    await waitFor(() => client.messages.length === 1);
    const position = wsPosition(client.messages[0]!);
    expect(position).toMatch(/^[A-Za-z0-9_-]+\.\d+$/);
    expect(client.messages[0]!.replace(` data-turbocast-position="${position}"`, "")).toBe(
      `<turbo-stream action="append" target="messages"><template><p id="message_${message.id}">over the socket</p></template></turbo-stream>`,
    );
  });

  it("carries several streams on one connection, and only those", async () => {
    app = await startApp();
    const client = await connect(await app.pageSrc("/rooms/1?transport=websocket"));
    await LobbyStream.for().remove({ target: "a" });
    await RoomStream.for(3).remove({ target: "other" });
    await RoomStream.for(1).remove({ target: "b" });
    await waitFor(() => client.messages.length === 2);
    expect(client.messages.map(targetOf)).toEqual(["a", "b"]);
  });

  it("replays from the render position, and resumes with after= after a disconnect", async () => {
    app = await startApp();
    const src = await app.pageSrc("/rooms/1?transport=websocket");
    await RoomStream.for(1).remove({ target: "early" });
    const first = await connect(src);
    await waitFor(() => first.messages.length === 1);
    expect(targetOf(first.messages[0]!)).toBe("early");
    first.ws.close();
    await first.closed;
    for (let i = 0; i < 100; i++) await RoomStream.for(1).remove({ target: `missed_${i}` });
    // what the client script does: reconnect with the last position it received
    const resumeUrl = new URL(src);
    resumeUrl.searchParams.set("after", wsPosition(first.messages[0]!)!);
    const second = await connect(resumeUrl.toString());
    await waitFor(() => second.messages.length === 100);
    expect(second.messages.map(targetOf)).toEqual(Array.from({ length: 100 }, (_, i) => `missed_${i}`));
  });

  it("sends one refresh frame for a position older than the retained history", async () => {
    app = await startApp({ history: { frames: 3, ageMs: 0 } });
    const src = await app.pageSrc("/rooms/1?transport=websocket");
    for (let i = 0; i < 10; i++) await RoomStream.for(1).remove({ target: `gone_${i}` });
    const client = await connect(src);
    await waitFor(() => client.messages.length === 1);
    expect(client.messages[0]).toMatch(
      /^<turbo-stream data-turbocast-position="[^"]+" action="refresh"><\/turbo-stream>$/,
    );
  });

  it("closes with 1008 when the client sends a message", async () => {
    app = await startApp();
    const client = await connect(await app.pageSrc("/rooms/1?transport=websocket"));
    client.ws.send("hello?");
    expect(await client.closed).toEqual({ code: 1008, reason: "turbocast subscriptions are receive-only" });
    await waitFor(() => app!.turbo.hub.size === 0);
  });

  it("closes with 1009 when the client sends an oversized message", async () => {
    app = await startApp();
    const client = await connect(await app.pageSrc("/rooms/1?transport=websocket"));
    client.ws.send(Buffer.alloc(64 * 1024));
    expect((await client.closed).code).toBe(1009);
  });

  it("pings every heartbeat and terminates a peer that stops answering", async () => {
    // long enough that a loaded test machine still answers each ping before the next one
    app = await startApp({ heartbeatMs: 250 });
    const src = await app.pageSrc("/rooms/1?transport=websocket");
    const healthy = await connect(src);
    let pings = 0;
    healthy.ws.on("ping", () => pings++);
    const silent = new WebSocket(src, { autoPong: false });
    sockets.push(silent);
    const silentClosed = new Promise<number>((resolve) => silent.on("close", (code) => resolve(code)));
    await new Promise((resolve) => silent.once("open", resolve));
    expect(await silentClosed).toBe(1006);
    await waitFor(() => pings >= 3);
    expect(healthy.ws.readyState).toBe(WebSocket.OPEN);
  });

  it("checks Origin: the app's own host and allowed origins pass, others get 403", async () => {
    app = await startApp({ allowedOrigins: ["https://partner.example"] });
    const src = await app.pageSrc("/rooms/1?transport=websocket");
    expect(await upgradeStatus(src, { origin: `http://127.0.0.1:${app.port}` })).toBe(101);
    expect(await upgradeStatus(src, { origin: "https://partner.example" })).toBe(101);
    expect(await upgradeStatus(src)).toBe(101); // no Origin: not a browser
    expect(await upgradeStatus(src, { origin: "https://evil.example" })).toBe(403);
    expect(await upgradeStatus(src, { origin: `http://127.0.0.1:${app.port + 1}` })).toBe(403);
    expect(await upgradeStatus(src, { origin: "null" })).toBe(403);
  });

  it("honours trust proxy for Origin: X-Forwarded-Host counts only when the proxy is trusted", async () => {
    app = await startApp({ trustProxy: true });
    const src = await app.pageSrc("/rooms/1?transport=websocket");
    const behindProxy = {
      origin: "https://chat.example.com",
      headers: { "X-Forwarded-Host": "chat.example.com", "X-Forwarded-Proto": "https" },
    };
    expect(await upgradeStatus(src, behindProxy)).toBe(101);
    await app.close();
    app = await startApp();
    const direct = await app.pageSrc("/rooms/1?transport=websocket");
    expect(await upgradeStatus(direct, behindProxy)).toBe(403);
  });
});
