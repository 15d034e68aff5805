import * as ws from "ws";
import type { Published } from "../brokers/broker.js";

/**
 * Wire encodings, made once per frame and per transport and memoised on the
 * frame (`published.encoded`), so delivering to N subscribers is N writes of
 * one shared Buffer — no per-subscriber encoding on the hot path.
 */

const SAFE_ID = /^[A-Za-z0-9._-]+$/;
const LINE_BREAK = /\r\n|\r|\n/;

/**
 * One SSE event: `id: <position>`, one `data:` line per line of the frame,
 * a blank line. No `event:` field: Turbo listens to "message". CR, LF and
 * CRLF all end a line in SSE, so each becomes its own `data:` line (the
 * browser joins them with LF). An id with CR/LF would end the field early
 * and forge another: refused.
 */
export function encodeSse(frame: Published): Buffer {
  if (!SAFE_ID.test(frame.position))
    throw new TypeError(`refusing to send an SSE id with unsafe characters: ${JSON.stringify(frame.position)}`);
  let text = `id: ${frame.position}\n`;
  for (const line of frame.frame.split(LINE_BREAK)) text += `data: ${line}\n`;
  return Buffer.from(`${text}\n`, "utf8");
}

/** The attribute that carries a frame's position on WebSocket messages (Turbo ignores unknown attributes). */
export const POSITION_ATTRIBUTE = "data-turbocast-position";
const OPENING_TAG = /^\s*<turbo-stream(?=[\s/>])/i;

/**
 * One WebSocket text message: the frame, with its position as an attribute
 * of the opening `<turbo-stream>` tag, where the client script reads it to
 * resume after a reconnect. Turbo ignores the attribute, and a page without
 * the client script is unaffected. A frame that does not start with
 * `<turbo-stream` is sent as it is.
 */
export function encodeWs(frame: Published): Buffer {
  const match = SAFE_ID.test(frame.position) ? OPENING_TAG.exec(frame.frame) : null;
  if (!match) return Buffer.from(frame.frame, "utf8");
  const at = match[0].length;
  return Buffer.from(
    `${frame.frame.slice(0, at)} ${POSITION_ATTRIBUTE}="${frame.position}"${frame.frame.slice(at)}`,
    "utf8",
  );
}

/** The SSE bytes of a frame, encoded by the first subscriber that needs them. */
export function sseBytes(frame: Published): Buffer {
  const encoded = (frame.encoded ??= {});
  return (encoded.sse ??= encodeSse(frame));
}

/** The WebSocket bytes of a frame, encoded by the first subscriber that needs them. */
export function wsBytes(frame: Published): Buffer {
  const encoded = (frame.encoded ??= {});
  return (encoded.ws ??= encodeWs(frame));
}

/**
 * The SSE event of a frame as one HTTP/1.1 chunk, `<size in hex>\r\n<event>\r\n`:
 * exactly the bytes a chunked response writes for it, ready to go to the
 * socket in one write (see SseConnection.send). Memoised like the others.
 */
export function sseChunkBytes(frame: Published): Buffer {
  const encoded = (frame.encoded ??= {});
  if (encoded.sseChunk) return encoded.sseChunk;
  const event = sseBytes(frame);
  const head = `${event.length.toString(16)}\r\n`;
  const chunk = Buffer.allocUnsafe(head.length + event.length + 2);
  chunk.write(head, 0, "latin1");
  event.copy(chunk, head.length);
  chunk.write("\r\n", head.length + event.length, "latin1");
  return (encoded.sseChunk = chunk);
}

/**
 * ws's frame builder (exported by ws, though not by its type definitions):
 * what `ws.send()` runs for every message and every socket.
 */
const buildWsFrame = (ws as unknown as { Sender: { frame(data: Buffer, options: object): Buffer[] } }).Sender.frame;

/**
 * The complete WebSocket frame of a frame's text message (header and
 * payload, unmasked, as a server sends it) in one Buffer, built once by ws's
 * own frame builder: each subscriber then costs one socket write instead of
 * a header built per socket and two corked writes (see WebSocketConnection.send).
 */
export function wsFrameBytes(frame: Published): Buffer {
  const encoded = (frame.encoded ??= {});
  if (encoded.wsFrame) return encoded.wsFrame;
  const parts = buildWsFrame(wsBytes(frame), { readOnly: false, mask: false, rsv1: false, opcode: 1, fin: true });
  return (encoded.wsFrame = parts.length === 1 ? parts[0]! : Buffer.concat(parts));
}
