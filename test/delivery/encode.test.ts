import { afterEach, describe, expect, it } from "vitest";
import type { Published } from "../../src/brokers/broker.js";
import { encodeSse, encodeWs, sseBytes, wsBytes } from "../../src/delivery/encode.js";
import { RoomStream, type TestApp, startApp } from "./fixture.js";
import { openSse, openWs, waitFor } from "../helpers.js";

const published = (frame: string, position = "ep0ch.42"): Published => ({
  stream: "named:lobby",
  position,
  seq: 42,
  frame,
});

describe("wire encodings", () => {
  it("writes one SSE event: id, one data: line per line, a blank line, no event field", () => {
    const text = encodeSse(published("<turbo-stream>\n  a\r\n\r\nb\rc</turbo-stream>")).toString("utf8");
    expect(text).toBe("id: ep0ch.42\ndata: <turbo-stream>\ndata:   a\ndata: \ndata: b\ndata: c</turbo-stream>\n\n");
  });

  it("refuses an SSE id that could end its field", () => {
    for (const position of ["a.1\nevent: x", "a.1\r", "a b.1", ""]) {
      expect(() => encodeSse(published("<turbo-stream></turbo-stream>", position))).toThrow(/unsafe/);
    }
  });

  it("marks the position on the opening <turbo-stream> tag of WebSocket messages", () => {
    expect(encodeWs(published('<turbo-stream action="remove" target="x"></turbo-stream>')).toString()).toBe(
      '<turbo-stream data-turbocast-position="ep0ch.42" action="remove" target="x"></turbo-stream>',
    );
    expect(encodeWs(published("  <turbo-stream>\n</turbo-stream>")).toString()).toBe(
      '  <turbo-stream data-turbocast-position="ep0ch.42">\n</turbo-stream>',
    );
    // not a turbo-stream element (or one named like it): sent as it is
    expect(encodeWs(published("<turbo-streamer></turbo-streamer>")).toString()).toBe(
      "<turbo-streamer></turbo-streamer>",
    );
  });

  it("memoises each encoding on the frame: every subscriber gets the same Buffer", () => {
    const frame = published("<turbo-stream></turbo-stream>");
    expect(sseBytes(frame)).toBe(sseBytes(frame));
    expect(wsBytes(frame)).toBe(wsBytes(frame));
    expect(frame.encoded?.sse).toBe(sseBytes(frame));
  });
});

describe("one frame, both transports", () => {
  let app: TestApp | undefined;
  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  it("encodes a frame once per transport, however many subscribe", async () => {
    app = await startApp();
    const sse = [
      openSse(`${app.url}${await app.pageSrc("/rooms/1")}`),
      openSse(`${app.url}${await app.pageSrc("/rooms/1")}`),
    ];
    const ws = await Promise.all([1, 2].map(async () => openWs(await app!.pageSrc("/rooms/1?transport=websocket"))));
    try {
      await Promise.all(sse.map((c) => c.opened));
      await waitFor(() => app!.turbo.hub.size === 4);
      const frame = await RoomStream.for(1).remove({ target: "both" });
      await waitFor(() => sse.every((c) => c.messages.length === 1) && ws.every((c) => c.messages.length === 1));
      expect(frame.encoded?.sse).toBeInstanceOf(Buffer);
      expect(frame.encoded?.ws).toBeInstanceOf(Buffer);
      expect(sse[0]!.messages[0]!.data).toBe(frame.frame);
      expect(ws[0]!.messages[0]).toBe(frame.encoded!.ws!.toString("utf8"));
    } finally {
      for (const c of sse) c.source.close();
      for (const c of ws) c.ws.terminate();
    }
  });
});
