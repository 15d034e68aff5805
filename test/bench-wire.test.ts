import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { WebSocketServer } from "ws";
import { openEventStream, openWebSocket, type WireConnection } from "../bench/lib/wire.js";
import { waitFor } from "./helpers.js";

// The bench counts deliveries with these hand-written clients: they must see every message whole.

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function listen(server: http.Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  cleanups.push(() => {
    server.closeAllConnections();
    return new Promise((resolve) => server.close(() => resolve()));
  });
  return (server.address() as AddressInfo).port;
}

describe("bench wire clients", () => {
  it("WebSocket: messages of every length class, fragmented ones, pings answered, client messages masked", async () => {
    const server = http.createServer();
    const wss = new WebSocketServer({ server, perMessageDeflate: false });
    const fromClient: string[] = [];
    let pongs = 0;
    let origin: string | undefined;
    wss.on("connection", (ws, req) => {
      origin = req.headers.origin;
      ws.on("message", (data) => fromClient.push(String(data)));
      ws.on("pong", () => pongs++);
      ws.send("a".repeat(10));
      ws.send("b".repeat(125));
      ws.send("c".repeat(126));
      ws.send("d".repeat(65_535));
      ws.send("e".repeat(70_000));
      ws.ping("hi");
      ws.send("f1", { fin: false });
      ws.send("f2", { fin: true });
    });
    const port = await listen(server);
    cleanups.push(() => wss.close());
    const got: string[] = [];
    let connection: WireConnection | undefined;
    connection = await openWebSocket(`ws://127.0.0.1:${port}/x?y=1`, `http://127.0.0.1:${port}`, {
      message: (data) => got.push(data.toString()),
      closed: () => {},
    });
    cleanups.push(() => connection?.destroy());
    await waitFor(() => got.length === 6 && pongs === 1);
    expect(got.map((m) => [m[0], m.length])).toEqual([
      ["a", 10],
      ["b", 125],
      ["c", 126],
      ["d", 65_535],
      ["e", 70_000],
      ["f", 4],
    ]);
    expect(got[5]).toBe("f1f2");
    expect(origin).toBe(`http://127.0.0.1:${port}`);
    connection.send("hello from the client");
    await waitFor(() => fromClient.length === 1);
    expect(fromClient).toEqual(["hello from the client"]);
  });

  it("WebSocket: a refused upgrade rejects, and a server close is reported", async () => {
    const server = http.createServer((_req, res) => res.writeHead(403).end());
    const wss = new WebSocketServer({ noServer: true });
    server.on("upgrade", (req, socket, head) => {
      if (req.url === "/no") {
        socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
        return;
      }
      wss.handleUpgrade(req, socket, head, (ws) => setTimeout(() => ws.close(1001, "bye"), 20));
    });
    const port = await listen(server);
    await expect(
      openWebSocket(`ws://127.0.0.1:${port}/no`, undefined, { message: () => {}, closed: () => {} }),
    ).rejects.toThrow(/403/);
    let closed = false;
    const connection = await openWebSocket(`ws://127.0.0.1:${port}/yes`, undefined, {
      message: () => {},
      closed: () => (closed = true),
    });
    cleanups.push(() => connection.destroy());
    await waitFor(() => closed);
  });

  it("SSE: events split across and joined within HTTP chunks arrive one by one", async () => {
    const server = http.createServer((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write("id: 1\ndata: one\n\n");
      res.write("id: 2\ndata: tw");
      setTimeout(() => {
        res.write("o\n\nid: 3\ndata: three\n\nid: 4\n");
        res.write("data: four\n\n");
        res.write(`data: ${"x".repeat(20_000)}\n\n`);
      }, 20);
    });
    const port = await listen(server);
    const events: string[] = [];
    const connection = await openEventStream(`http://127.0.0.1:${port}/s?a=b`, {
      message: (e) => events.push(e.toString()),
      closed: () => {},
    });
    cleanups.push(() => connection.destroy());
    await waitFor(() => events.length === 5);
    expect(events.slice(0, 4)).toEqual([
      "id: 1\ndata: one",
      "id: 2\ndata: two",
      "id: 3\ndata: three",
      "id: 4\ndata: four",
    ]);
    expect(events[4]).toBe(`data: ${"x".repeat(20_000)}`);
  });

  it("SSE: a non-200 answer rejects", async () => {
    const server = http.createServer((_req, res) => res.writeHead(403).end("no"));
    const port = await listen(server);
    await expect(openEventStream(`http://127.0.0.1:${port}/`, { message: () => {}, closed: () => {} })).rejects.toThrow(
      /403/,
    );
  });
});
