import http from "node:http";
import type { AddressInfo } from "node:net";
import { Server } from "socket.io";
import type { BenchServer } from "./types.js";

/**
 * What a Node developer would pick instead: Socket.IO, WebSocket transport
 * only, every client in one room, `io.to(room).emit(...)` (which encodes the
 * packet and pre-builds its WebSocket frame once per broadcast).
 */
export function socketIoServer(): BenchServer {
  const server = http.createServer();
  const io = new Server(server, { transports: ["websocket"], serveClient: false, perMessageDeflate: false });
  io.on("connection", (socket) => {
    void socket.join("room");
  });
  return {
    async start() {
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      const { port } = server.address() as AddressInfo;
      return {
        port,
        origin: `http://127.0.0.1:${port}`,
        urls: { sio: `ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket` },
      };
    },
    subscribers: () => io.of("/").adapter.rooms.get("room")?.size ?? 0,
    broadcast(_id, frame) {
      io.to("room").emit("message", frame);
    },
    async close() {
      io.disconnectSockets(true);
      await io.close();
    },
  };
}
