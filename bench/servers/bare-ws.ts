import http from "node:http";
import type { AddressInfo } from "node:net";
import WebSocket, { WebSocketServer } from "ws";
import type { BenchServer } from "./types.js";

/**
 * The floor every Node server starts from: `ws`, looping over its clients
 * and sending the frame as a string (ws's own broadcast example).
 */
export function bareWsServer(): BenchServer {
  const server = http.createServer();
  const wss = new WebSocketServer({ server, perMessageDeflate: false });
  return {
    async start() {
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      const { port } = server.address() as AddressInfo;
      return { port, origin: `http://127.0.0.1:${port}`, urls: { ws: `ws://127.0.0.1:${port}/` } };
    },
    subscribers: () => wss.clients.size,
    broadcast(_id, frame) {
      for (const client of wss.clients) {
        if (client.readyState === WebSocket.OPEN) client.send(frame);
      }
    },
    async close() {
      for (const client of wss.clients) client.terminate();
      wss.close();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
