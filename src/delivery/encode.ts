import * as ws from "ws";
import type { Published } from "../brokers/broker.js";
import { isDataChannel } from "../data/channel.js";
import { dataSseText, dataWsText } from "../data/wire.js";
import { escapeHtml } from "../frames/escape.js";

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
export function encodeSse(frame: Published, markStream = false): Buffer {
  if (!SAFE_ID.test(frame.position))
    throw new TypeError(`refusing to send an SSE id with unsafe characters: ${JSON.stringify(frame.position)}`);
  if (isDataChannel(frame.stream)) return Buffer.from(dataSseText(frame), "utf8");
  let text = `id: ${frame.position}\n`;
  const body = markStream ? withAttributes(frame.frame, streamAttribute(frame)) : frame.frame;
  for (const line of body.split(LINE_BREAK)) text += `data: ${line}\n`;
  return Buffer.from(`${text}\n`, "utf8");
}

/** The attribute that names a frame's stream on a shared connection (the client script routes frames to tabs by it). */
export const STREAM_ATTRIBUTE = "data-turbocast-stream";
/** The attribute that lists the subscription ids a frame on a shared WebSocket belongs to. */
export const FOR_ATTRIBUTE = "data-turbocast-for";

function streamAttribute(frame: Published): string {
  return frame.stream === "" ? "" : ` ${STREAM_ATTRIBUTE}="${escapeHtml(frame.stream)}"`;
}

/** `frame` with `attributes` (each with its leading space) added to its opening `<turbo-stream` tag. */
function withAttributes(frame: string, attributes: string): string {
  const match = attributes === "" ? null : OPENING_TAG.exec(frame);
  if (!match) return frame;
  const at = match[0].length;
  return `${frame.slice(0, at)}${attributes}${frame.slice(at)}`;
}

/** The attribute that carries a frame's position on WebSocket messages (Turbo ignores unknown attributes). */
export const POSITION_ATTRIBUTE = "data-turbocast-position";
const OPENING_TAG = /^\s*<turbo-stream(?=[\s/>])/i;
/** Most tag sets whose bytes a frame keeps (ids differ little between pages: the client script numbers them from 1). */
const MAX_TAG_SETS = 16;

/**
 * One WebSocket text message: the frame, with its position as an attribute
 * of the opening `<turbo-stream>` tag, where the client script reads it to
 * resume after a reconnect. Turbo ignores the attribute, and a page without
 * the client script is unaffected. A frame that does not start with
 * `<turbo-stream` is sent as it is.
 */
export function encodeWs(frame: Published): Buffer {
  if (isDataChannel(frame.stream)) return Buffer.from(dataWsText(frame), "utf8");
  const match = SAFE_ID.test(frame.position) ? OPENING_TAG.exec(frame.frame) : null;
  if (!match) return Buffer.from(frame.frame, "utf8");
  const at = match[0].length;
  return Buffer.from(
    `${frame.frame.slice(0, at)} ${POSITION_ATTRIBUTE}="${frame.position}"${frame.frame.slice(at)}`,
    "utf8",
  );
}

/**
 * A frame on a shared WebSocket: as encodeWs, plus the ids of the
 * subscriptions it is sent for (`tags`, space-separated) and its stream,
 * so the client script can advance each subscription's position and route
 * the frame to the tab that holds it. Without an opening `<turbo-stream` tag
 * (a refresh always has one) it goes as it is.
 */
export function encodeWsTagged(frame: Published, tags: string): Buffer {
  if (isDataChannel(frame.stream)) return Buffer.from(dataWsText(frame, tags), "utf8");
  const position = SAFE_ID.test(frame.position) ? ` ${POSITION_ATTRIBUTE}="${frame.position}"` : "";
  return Buffer.from(
    withAttributes(frame.frame, `${position} ${FOR_ATTRIBUTE}="${escapeHtml(tags)}"${streamAttribute(frame)}`),
    "utf8",
  );
}

/** The complete WebSocket frame of a frame for the subscriptions `tags`, kept for a few tag sets. */
export function wsTaggedFrameBytes(frame: Published, tags: string): Buffer {
  const encoded = (frame.encoded ??= {});
  const sets = (encoded.wsTagged ??= new Map());
  let bytes = sets.get(tags);
  if (bytes) return bytes;
  bytes = wsFrameOf(encodeWsTagged(frame, tags));
  if (sets.size < MAX_TAG_SETS) sets.set(tags, bytes);
  return bytes;
}

/** The union SSE event of a frame (its stream marked), memoised like the others. */
export function sseUnionBytes(frame: Published): Buffer {
  const encoded = (frame.encoded ??= {});
  return (encoded.sseUnion ??= encodeSse(frame, true));
}

/** The union SSE event as one HTTP/1.1 chunk (see sseChunkBytes). */
export function sseUnionChunkBytes(frame: Published): Buffer {
  const encoded = (frame.encoded ??= {});
  return (encoded.sseUnionChunk ??= chunkOf(sseUnionBytes(frame)));
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
  return (encoded.sseChunk ??= chunkOf(sseBytes(frame)));
}

function chunkOf(event: Buffer): Buffer {
  const head = `${event.length.toString(16)}\r\n`;
  const chunk = Buffer.allocUnsafe(head.length + event.length + 2);
  chunk.write(head, 0, "latin1");
  event.copy(chunk, head.length);
  chunk.write("\r\n", head.length + event.length, "latin1");
  return chunk;
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
  return (encoded.wsFrame ??= wsFrameOf(wsBytes(frame)));
}

function wsFrameOf(payload: Buffer): Buffer {
  const parts = buildWsFrame(payload, { readOnly: false, mask: false, rsv1: false, opcode: 1, fin: true });
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
}
