/**
 * The bench's subscribers, spoken straight over `net` sockets: a WebSocket
 * client (RFC 6455) and an SSE client (HTTP/1.1, chunked), each a small
 * hand-written parser over the socket's `data` chunks.
 *
 * Why not `ws` and `http.get`: with thousands of subscribers in one process,
 * the subscriber side was the slower half of the pair — `ws` runs every
 * message through a Writable stream and an event per layer, `http` through
 * llhttp and a Readable — so a fast server's last delivery waited on the
 * clients, not on the server. These parsers cost a fraction of that, the same
 * for every server measured, so the figures say more about the servers.
 *
 * They are clients for a benchmark, not general ones: no extensions, text
 * and binary messages alike, no UTF-8 validation.
 */
import { createHash, randomBytes } from "node:crypto";
import net from "node:net";

const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const HEADER_END = Buffer.from("\r\n\r\n", "latin1");

export interface WireConnection {
  /** Sends one text message (WebSocket only; masked, as a client must). */
  send(text: string): void;
  /** Ends the connection at once. */
  destroy(): void;
}

export interface WireHandlers {
  /** One complete message (WebSocket) or event (SSE); `data` may be a view into the socket's chunk: copy it to keep it. */
  message(data: Buffer, connection: WireConnection): void;
  /** The connection closed after it had opened (not called after destroy()). */
  closed(): void;
}

interface OpenOptions {
  /** Extra request header lines, without the final CRLF. */
  headers: string[];
  timeoutMs: number;
}

/**
 * Connects, writes a GET request and waits for the response head; resolves
 * with the socket, the head's status code and header block, and the bytes
 * after it.
 */
function request(
  url: URL,
  options: OpenOptions,
): Promise<{ socket: WireSocket; status: number; head: string; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    const socket = connect(url);
    let received: Buffer = Buffer.alloc(0);
    const fail = (error: Error): void => {
      cleanup();
      socket.destroy();
      reject(error);
    };
    const timer = setTimeout(() => fail(new Error(`no response within ${options.timeoutMs} ms`)), options.timeoutMs);
    const onError = (error: Error): void => fail(error);
    const onClose = (): void => fail(new Error("closed before the response head"));
    socket.reader = (chunk: Buffer): void => {
      received = Buffer.concat([received, chunk]);
      const end = received.indexOf(HEADER_END);
      if (end < 0) {
        if (received.length > 16_384) fail(new Error("response head over 16 KB"));
        return;
      }
      cleanup();
      const head = received.toString("latin1", 0, end);
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? Number.NaN);
      resolve({ socket, status, head, rest: received.subarray(end + HEADER_END.length) });
    };
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.reader = ignore;
      socket.off("error", onError);
      socket.off("close", onClose);
    };
    socket.on("error", onError);
    socket.on("close", onClose);
    socket.once("connect", () => {
      const path = `${url.pathname}${url.search}`;
      socket.write(
        `GET ${path} HTTP/1.1\r\nHost: ${url.host}\r\n${options.headers.map((h) => `${h}\r\n`).join("")}\r\n`,
        "latin1",
      );
    });
  });
}

const ignore = (): void => {};

/** A socket whose incoming bytes go to `reader`, a view into a buffer shared by every socket: copy what you keep. */
type WireSocket = net.Socket & { reader: (chunk: Buffer) => void };

/**
 * Reads go straight into one buffer shared by all sockets (net's `onread`
 * option): no Buffer allocated and no Readable stream event per message.
 * Safe because every reader is synchronous and copies what it keeps.
 */
const READ_BUFFER = Buffer.allocUnsafe(256 * 1024);

function connect(url: URL): WireSocket {
  let socket: WireSocket;
  socket = net.connect({
    port: Number(url.port),
    host: url.hostname,
    onread: {
      buffer: READ_BUFFER,
      callback: (nread: number, buffer: Buffer) => {
        socket.reader(buffer.subarray(0, nread));
        return true;
      },
    },
  }) as WireSocket;
  socket.reader = ignore;
  socket.setNoDelay(true);
  return socket;
}

function header(head: string, name: string): string | undefined {
  const match = new RegExp(`\\r\\n${name}:[ \\t]*([^\\r\\n]*)`, "i").exec(head);
  return match?.[1]?.trim();
}

/** One client frame: FIN, the opcode, a mask key and the masked payload. */
function clientFrame(opcode: number, payload: Buffer): Buffer {
  const length = payload.length;
  const extra = length < 126 ? 0 : length < 65_536 ? 2 : 8;
  const frame = Buffer.allocUnsafe(2 + extra + 4 + length);
  frame[0] = 0x80 | opcode;
  if (extra === 0) frame[1] = 0x80 | length;
  else if (extra === 2) {
    frame[1] = 0x80 | 126;
    frame.writeUInt16BE(length, 2);
  } else {
    frame[1] = 0x80 | 127;
    frame.writeBigUInt64BE(BigInt(length), 2);
  }
  const mask = randomBytes(4);
  mask.copy(frame, 2 + extra);
  const at = 2 + extra + 4;
  for (let i = 0; i < length; i++) frame[at + i] = payload[i]! ^ mask[i & 3]!;
  return frame;
}

/**
 * Opens a WebSocket to `url` (ws://host:port/path?query). Answers pings with
 * pongs and a close frame with one of its own; hands every data message to
 * `handlers.message`. Rejects when the upgrade is not answered with a valid 101.
 */
export async function openWebSocket(
  rawUrl: string,
  origin: string | undefined,
  handlers: WireHandlers,
  timeoutMs = 30_000,
  subprotocol?: string,
): Promise<WireConnection> {
  const url = new URL(rawUrl);
  const key = randomBytes(16).toString("base64");
  const headers = [
    "Upgrade: websocket",
    "Connection: Upgrade",
    `Sec-WebSocket-Key: ${key}`,
    "Sec-WebSocket-Version: 13",
  ];
  if (origin) headers.push(`Origin: ${origin}`);
  if (subprotocol) headers.push(`Sec-WebSocket-Protocol: ${subprotocol}`);
  const { socket, status, head, rest } = await request(url, { headers, timeoutMs });
  const accept = createHash("sha1")
    .update(key + WS_GUID)
    .digest("base64");
  if (status !== 101 || header(head, "sec-websocket-accept") !== accept) {
    socket.destroy();
    throw new Error(`WebSocket upgrade answered ${head.split("\r\n")[0]}`);
  }
  let destroyed = false;
  const connection: WireConnection = {
    send(text) {
      if (!socket.destroyed) socket.write(clientFrame(0x1, Buffer.from(text, "utf8")));
    },
    destroy() {
      destroyed = true;
      socket.destroy();
    },
  };
  let carry: Buffer | null = null;
  /** Fragments of a message sent in several frames (rare: servers send each message whole). */
  let fragments: Buffer[] | null = null;
  const parse = (chunk: Buffer): void => {
    const data = carry === null ? chunk : Buffer.concat([carry, chunk]);
    carry = null;
    let at = 0;
    while (data.length - at >= 2) {
      const b0 = data[at]!;
      const b1 = data[at + 1]!;
      if (b1 & 0x80) {
        socket.destroy(new Error("the server sent a masked frame"));
        return;
      }
      let length = b1 & 0x7f;
      let start = at + 2;
      if (length === 126) {
        if (data.length - at < 4) break;
        length = data.readUInt16BE(at + 2);
        start = at + 4;
      } else if (length === 127) {
        if (data.length - at < 10) break;
        length = Number(data.readBigUInt64BE(at + 2));
        start = at + 10;
      }
      if (data.length - start < length) break;
      const payload = data.subarray(start, start + length);
      at = start + length;
      const opcode = b0 & 0x0f;
      const fin = (b0 & 0x80) !== 0;
      if (opcode === 0x9) socket.write(clientFrame(0xa, payload));
      else if (opcode === 0x8) {
        socket.end(clientFrame(0x8, payload.subarray(0, 2)));
        return;
      } else if (opcode === 0x0 || opcode === 0x1 || opcode === 0x2) {
        if (!fin) (fragments ??= []).push(Buffer.from(payload));
        else if (fragments !== null) {
          fragments.push(payload);
          const whole = Buffer.concat(fragments);
          fragments = null;
          handlers.message(whole, connection);
        } else handlers.message(payload, connection);
      }
    }
    if (at < data.length) carry = Buffer.from(data.subarray(at));
  };
  socket.reader = parse;
  socket.on("error", () => {});
  socket.once("close", () => {
    if (!destroyed) handlers.closed();
  });
  if (rest.length > 0) parse(rest);
  return connection;
}

/**
 * Opens an SSE stream: GET `url` with `Accept: text/event-stream`, the body
 * read as HTTP/1.1 chunks (or as plain bytes when the server does not chunk),
 * split into events at blank lines; each event's raw text (its `id:` and
 * `data:` lines) goes to `handlers.message`. Rejects on any status but 200.
 */
export async function openEventStream(
  rawUrl: string,
  handlers: WireHandlers,
  timeoutMs = 30_000,
): Promise<WireConnection> {
  const url = new URL(rawUrl);
  const { socket, status, head, rest } = await request(url, { headers: ["Accept: text/event-stream"], timeoutMs });
  if (status !== 200) {
    socket.destroy();
    throw new Error(`SSE GET answered ${head.split("\r\n")[0]}`);
  }
  const chunked = /chunked/i.test(header(head, "transfer-encoding") ?? "");
  let destroyed = false;
  const connection: WireConnection = {
    send() {
      throw new Error("an SSE stream cannot send");
    },
    destroy() {
      destroyed = true;
      socket.destroy();
    },
  };
  // events end with a blank line; a body piece may hold part of one, or several
  let body: Buffer | null = null;
  const events = (piece: Buffer): void => {
    const data = body === null ? piece : Buffer.concat([body, piece]);
    body = null;
    let start = 0;
    for (;;) {
      const end = data.indexOf("\n\n", start, "latin1");
      if (end < 0) break;
      handlers.message(data.subarray(start, end), connection);
      start = end + 2;
    }
    if (start < data.length) body = Buffer.from(data.subarray(start));
  };
  // chunked framing: `<hex size>[;ext]\r\n<size bytes>\r\n`, a 0 size ends the body
  let carry: Buffer | null = null;
  const dechunk = (chunk: Buffer): void => {
    const data = carry === null ? chunk : Buffer.concat([carry, chunk]);
    carry = null;
    let at = 0;
    for (;;) {
      const lineEnd = data.indexOf("\r\n", at, "latin1");
      if (lineEnd < 0) break;
      const size = Number.parseInt(data.toString("latin1", at, lineEnd), 16);
      if (!Number.isFinite(size)) {
        socket.destroy(new Error("malformed chunk size"));
        return;
      }
      if (size === 0) {
        socket.end();
        return;
      }
      const start = lineEnd + 2;
      if (data.length - start < size + 2) break;
      events(data.subarray(start, start + size));
      at = start + size + 2;
    }
    if (at < data.length) carry = Buffer.from(data.subarray(at));
  };
  const read = chunked ? dechunk : events;
  socket.reader = read;
  socket.on("error", () => {});
  socket.once("close", () => {
    if (!destroyed) handlers.closed();
  });
  if (rest.length > 0) read(rest);
  return connection;
}
