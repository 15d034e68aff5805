import http from "node:http";
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import type { Response } from "express";
import type { Published } from "../../src/brokers/broker.js";
import WebSocket, { WebSocketServer } from "ws";
import { encodeSse, sseChunkBytes, wsBytes, wsFrameBytes } from "../../src/delivery/encode.js";
import { SseConnection } from "../../src/delivery/sse-connection.js";
import { WebSocketConnection } from "../../src/delivery/websocket-connection.js";
import { closeServer, listen, waitFor } from "../helpers.js";

const published = (frame: string, seq: number): Published => ({
  stream: "named:lobby",
  position: `ep0ch.${seq}`,
  seq,
  frame,
});

/** Decodes a chunked HTTP/1.1 body; throws on anything malformed. */
function dechunk(body: string): { data: string; complete: boolean } {
  let data = "";
  let at = 0;
  for (;;) {
    const eol = body.indexOf("\r\n", at);
    if (eol < 0) return { data, complete: false };
    const size = Number.parseInt(body.slice(at, eol), 16);
    if (!Number.isFinite(size) || !/^[0-9a-f]+$/i.test(body.slice(at, eol)))
      throw new Error(`bad chunk size at ${at}: ${JSON.stringify(body.slice(at, eol))}`);
    if (size === 0) return { data, complete: body.slice(eol + 2, eol + 4) === "\r\n" };
    const chunk = body.slice(eol + 2, eol + 2 + size);
    if (body.slice(eol + 2 + size, eol + 4 + size) !== "\r\n")
      throw new Error(`chunk at ${at} is not followed by CRLF`);
    data += chunk;
    at = eol + 4 + size;
  }
}

/** GETs `/` over a raw socket and returns the response's bytes up to the end of its chunked body. */
function rawGet(port: number): Promise<{ head: string; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1", () =>
      socket.write("GET / HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"),
    );
    let text = "";
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      text += chunk;
      const split = text.indexOf("\r\n\r\n");
      if (split < 0) return;
      const body = text.slice(split + 4);
      try {
        if (dechunk(body).complete) {
          socket.destroy();
          resolve({ head: text.slice(0, split), body: dechunk(body).data });
        }
      } catch (error) {
        socket.destroy();
        reject(error);
      }
    });
    socket.on("error", reject);
  });
}

describe("SSE frames on the socket", () => {
  let server: http.Server | undefined;
  afterEach(async () => {
    if (server) await closeServer(server);
    server = undefined;
  });

  it("frames an SSE event as exactly one HTTP chunk, memoised", () => {
    const frame = published('<turbo-stream action="remove" target="é"></turbo-stream>', 7);
    const event = encodeSse(frame);
    const chunk = sseChunkBytes(frame);
    expect(chunk.toString("latin1")).toBe(`${event.length.toString(16)}\r\n${event.toString("latin1")}\r\n`);
    expect(sseChunkBytes(frame)).toBe(chunk);
  });

  for (const wrapped of [false, true]) {
    it(`writes a valid chunked stream, in order, ${wrapped ? "through a wrapped res.write (middleware sees every byte)" : "straight to the socket"}`, async () => {
      const seen: string[] = [];
      server = http.createServer((_req, res) => {
        // record what reaches res.write (wrapped) or the socket (not wrapped)
        const target = (wrapped ? res : res.socket!) as unknown as {
          write: (chunk: unknown, ...rest: unknown[]) => boolean;
        };
        const write = target.write.bind(target);
        target.write = (chunk: unknown, ...rest: unknown[]) => {
          seen.push(Buffer.isBuffer(chunk) ? chunk.toString("utf8") : String(chunk));
          return write(chunk, ...rest);
        };
        const connection = new SseConnection(res as unknown as Response, {
          retryMs: 1000,
          maxBufferedBytes: 1 << 20,
          onClose: () => {},
        });
        connection.start();
        connection.send(published("<turbo-stream>one\nline</turbo-stream>", 1));
        connection.heartbeat();
        connection.send(published("<turbo-stream>two</turbo-stream>", 2));
        setImmediate(() => connection.close());
      });
      const { port } = await listen(server);
      const { head, body } = await rawGet(port);
      expect(head).toMatch(/transfer-encoding: chunked/i);
      expect(body).toBe(
        "retry: 1000\n\n" +
          "id: ep0ch.1\ndata: <turbo-stream>one\ndata: line</turbo-stream>\n\n" +
          ": heartbeat\n\n" +
          "id: ep0ch.2\ndata: <turbo-stream>two</turbo-stream>\n\n",
      );
      const two = "id: ep0ch.2\ndata: <turbo-stream>two</turbo-stream>\n\n";
      if (wrapped) expect(seen).toContain(two);
      // the fast path: the whole chunk in one socket write
      else expect(seen).toContain(`${Buffer.byteLength(two).toString(16)}\r\n${two}\r\n`);
    });
  }
});

describe("WebSocket frames built once", () => {
  let server: http.Server | undefined;
  afterEach(async () => {
    if (server) await closeServer(server);
    server = undefined;
  });

  it("builds the complete unmasked text frame once: header, then the payload", () => {
    const short = published("<turbo-stream></turbo-stream>", 1);
    const payload = wsBytes(short);
    expect(wsFrameBytes(short)).toEqual(Buffer.concat([Buffer.from([0x81, payload.length]), payload]));
    expect(wsFrameBytes(short)).toBe(wsFrameBytes(short));
    const long = published(`<turbo-stream>${"x".repeat(1000)}</turbo-stream>`, 2);
    const longPayload = wsBytes(long);
    const header = Buffer.from([0x81, 126, longPayload.length >> 8, longPayload.length & 0xff]);
    expect(wsFrameBytes(long)).toEqual(Buffer.concat([header, longPayload]));
  });

  // pins the ws internal the hot path relies on (Socket.IO relies on it too): an upgrade of ws that moves it fails here
  it("hands each frame to ws's Sender as one write; messages, pings and the close frame stay in order", async () => {
    server = http.createServer();
    const wss = new WebSocketServer({ server, perMessageDeflate: false });
    const writes: Buffer[] = [];
    wss.on("connection", (ws) => {
      const sender = (ws as unknown as { _sender: { sendFrame: (list: Buffer[], cb?: unknown) => void } })._sender;
      expect(typeof sender.sendFrame).toBe("function");
      const sendFrame = sender.sendFrame.bind(sender);
      sender.sendFrame = (list, cb) => {
        writes.push(...list);
        sendFrame(list, cb);
      };
      const connection = new WebSocketConnection(ws, { maxBufferedBytes: 1 << 20, onClose: () => {} });
      connection.send(published("<turbo-stream>one</turbo-stream>", 1));
      connection.heartbeat();
      connection.send(published("<turbo-stream>two</turbo-stream>", 2));
      connection.close();
      connection.send(published("<turbo-stream>after close</turbo-stream>", 3));
    });
    const { port } = await listen(server);
    const client = new WebSocket(`ws://127.0.0.1:${port}/`);
    const events: string[] = [];
    client.on("message", (data) => events.push(`message ${String(data)}`));
    client.on("ping", () => events.push("ping"));
    client.on("close", (code) => events.push(`close ${code}`));
    await waitFor(() => events.some((e) => e.startsWith("close")));
    expect(events).toEqual([
      'message <turbo-stream data-turbocast-position="ep0ch.1">one</turbo-stream>',
      "ping",
      'message <turbo-stream data-turbocast-position="ep0ch.2">two</turbo-stream>',
      "close 1001",
    ]);
    const frameTwo = wsFrameBytes(published("<turbo-stream>two</turbo-stream>", 2));
    expect(writes.some((w) => w.equals(frameTwo))).toBe(true);
    wss.close();
  });
});
