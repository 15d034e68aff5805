import http from "node:http";
import type { AddressInfo } from "node:net";
import * as wsModule from "ws";
import WebSocket, { WebSocketServer } from "ws";
import type { BenchServer } from "./types.js";

/** Experiments on ws's send path (not part of the report): how much each encoding step costs per subscriber. */
export function wsVariantServer(variant: string): BenchServer {
  const server = http.createServer();
  const wss = new WebSocketServer({ server, perMessageDeflate: false });
  const Sender = (wsModule as unknown as { Sender: { frame(data: Buffer, o: object): Buffer[] } }).Sender;
  type Internal = WebSocket & { _sender: { sendFrame(list: Buffer[], cb?: () => void): void }; _socket: import("node:net").Socket };
  return {
    async start() {
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      const { port } = server.address() as AddressInfo;
      return { port, origin: `http://127.0.0.1:${port}`, urls: { ws: `ws://127.0.0.1:${port}/` } };
    },
    subscribers: () => wss.clients.size,
    broadcast(_id, frame) {
      const buf = Buffer.from(frame);
      if (variant === "string") for (const c of wss.clients) c.send(frame);
      else if (variant === "buffer") for (const c of wss.clients) c.send(buf, { binary: false });
      else if (variant === "prebuilt2") {
        const list = Sender.frame(buf, { readOnly: false, mask: false, rsv1: false, opcode: 1, fin: true });
        for (const c of wss.clients) (c as Internal)._sender.sendFrame(list);
      } else if (variant === "prebuilt1") {
        const one = Buffer.concat(Sender.frame(buf, { readOnly: false, mask: false, rsv1: false, opcode: 1, fin: true }));
        for (const c of wss.clients) (c as Internal)._socket.write(one);
      } else throw new Error(variant);
    },
    async close() {
      for (const client of wss.clients) client.terminate();
      wss.close();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
