import http from "node:http";
import type { Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { RoomStream, type TestApp, startApp } from "./fixture.js";
import { openSse, openWs, waitFor } from "../helpers.js";

let app: TestApp | undefined;
const cleanups: Array<() => void> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) cleanup();
  await app?.close();
  app = undefined;
});

const PAYLOAD = "x".repeat(16 * 1024);
const frame = (i: number): string =>
  `<turbo-stream action="append" target="log"><template><p id="f${i}">${PAYLOAD}</p></template></turbo-stream>`;
const indexOf = (message: string): number => Number(/id="f(\d+)"/.exec(message)?.[1]);

/**
 * Publishes 16 KiB frames in batches, waiting after each batch until every
 * healthy client has it (so they never fall behind), until `dropped()`.
 * The stalled client's kernel buffers fill first, then Node's; past
 * maxBufferedBytes the server drops it.
 */
async function publishUntil(dropped: () => boolean, healthyCounts: () => number[], limit = 4000): Promise<number> {
  let published = 0;
  while (!dropped()) {
    if (published >= limit) throw new Error(`the stalled client was not dropped after ${limit} frames`);
    for (let i = 0; i < 8; i++) await RoomStream.for(1).broadcastRaw(frame(published++));
    await waitFor(() => healthyCounts().every((n) => n === published), {
      timeoutMs: 10_000,
      message: `healthy clients at ${published}`,
    });
  }
  return published;
}

describe("slow consumers", () => {
  it("drops a WebSocket subscriber that stops reading while 50 others receive every frame", async () => {
    app = await startApp({ maxBufferedBytes: 256 * 1024 });
    const src = await app.pageSrc("/rooms/1?transport=websocket");
    const healthy = await Promise.all(Array.from({ length: 50 }, () => openWs(src)));
    for (const client of healthy) cleanups.push(() => client.ws.terminate());
    const slow = await openWs(src);
    cleanups.push(() => slow.ws.terminate());
    // the slow client stops reading: its socket is paused, so TCP pushes back on the server
    (slow.ws as unknown as { _socket: Socket })._socket.pause();
    await waitFor(() => app!.turbo.hub.size === 51);

    const published = await publishUntil(
      () => app!.turbo.hub.size === 50,
      () => healthy.map((c) => c.messages.length),
    );
    // a few more after the drop: the others are unaffected
    for (let i = 0; i < 8; i++) await RoomStream.for(1).broadcastRaw(frame(published + i));
    await waitFor(() => healthy.every((c) => c.messages.length === published + 8), { timeoutMs: 10_000 });
    for (const client of healthy) {
      expect(client.messages.map(indexOf)).toEqual(Array.from({ length: published + 8 }, (_, i) => i));
    }
    expect(slow.messages.length).toBeLessThan(published);
  });

  it("drops an SSE subscriber that stops reading; it resumes from Last-Event-ID when it comes back", async () => {
    app = await startApp({ maxBufferedBytes: 256 * 1024 });
    const src = await app.pageSrc("/rooms/1");
    const healthy = Array.from({ length: 10 }, () => openSse(`${app!.url}${src}`));
    for (const client of healthy) cleanups.push(() => client.source.close());
    await Promise.all(healthy.map((c) => c.opened));
    let stalledResponse: http.IncomingMessage | undefined;
    const request = http.get(`${app.url}${src}`, { headers: { Accept: "text/event-stream" } }, (res) => {
      stalledResponse = res;
      res.pause();
    });
    cleanups.push(() => request.destroy());
    await waitFor(() => stalledResponse !== undefined && app!.turbo.hub.size === 11);

    const published = await publishUntil(
      () => app!.turbo.hub.size === 10,
      () => healthy.map((c) => c.messages.length),
    );
    for (const client of healthy)
      expect(client.messages.map((m) => indexOf(m.data))).toEqual(Array.from({ length: published }, (_, i) => i));

    // back again, from the first frame it could have seen: everything is replayed in order
    const back = openSse(`${app.url}${src}`, { headers: { "Last-Event-ID": healthy[0]!.messages[0]!.id } });
    cleanups.push(() => back.source.close());
    await waitFor(() => back.messages.length === published - 1, { timeoutMs: 10_000 });
    expect(back.messages.map((m) => indexOf(m.data))).toEqual(Array.from({ length: published - 1 }, (_, i) => i + 1));
  });
});
