import net from "node:net";
import type { AddressInfo } from "node:net";
import type { BenchServer } from "./types.js";

/**
 * Not a WebSocket server: the floor under all of them. Each broadcast is one
 * `socket.write()` of the same length-prefixed buffer per subscriber — the
 * one system call per subscriber that no Node server can avoid.
 */
export function rawTcpServer(): BenchServer {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    socket.once("close", () => sockets.delete(socket));
  });
  return {
    async start() {
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      const { port } = server.address() as AddressInfo;
      return { port, origin: `http://127.0.0.1:${port}`, urls: { tcp: `tcp://127.0.0.1:${port}` } };
    },
    subscribers: () => sockets.size,
    broadcast(_id, frame) {
      const payload = Buffer.from(frame);
      const message = Buffer.allocUnsafe(4 + payload.length);
      message.writeUInt32BE(payload.length, 0);
      payload.copy(message, 4);
      for (const socket of sockets) socket.write(message);
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
