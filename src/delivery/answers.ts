import type { Duplex } from "node:stream";
import type { Response } from "express";

/** Answers carry a status and nothing else: a refusal never says why. */
const STATUS_TEXT: Record<number, string> = {
  400: "Bad Request",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  406: "Not Acceptable",
  414: "URI Too Long",
  500: "Internal Server Error",
  503: "Service Unavailable",
};

/** Answers an HTTP request with its status alone. */
export function answer(res: Response, status: number): void {
  res
    .status(status)
    .set("Cache-Control", "no-store")
    .type("text/plain")
    .send(STATUS_TEXT[status] ?? "Error");
}

/** Answers an upgrade request with a plain HTTP response before any handshake, then closes the socket. */
export function abortHandshake(socket: Duplex, status: number): void {
  if (socket.destroyed) return;
  const body = STATUS_TEXT[status] ?? "Error";
  socket.end(
    `HTTP/1.1 ${status} ${body}\r\nConnection: close\r\nCache-Control: no-store\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
  socket.once("finish", () => socket.destroy());
}
