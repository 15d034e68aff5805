import type { OutgoingFrame } from "./publish-batcher.js";

/**
 * How a batch of frames crosses the wire to a scale-out broker's server and
 * back out on its channel, with no per-frame encoding: the frames' UTF-8
 * bytes back to back (the body), and a JSON header that says where each one
 * ends and which stream it belongs to.
 *
 * To the server (Redis script arguments, PostgreSQL statement parameters):
 * the body, each frame's byte length and each frame's stream. The server
 * stores each frame as it is and passes the body on.
 *
 * On the channel, one message per batch (on PostgreSQL when it fits a
 * NOTIFY; a larger batch is named by its seq range, see postgres-sql.ts):
 *
 *     {"o":<origin>,"n":<batch>,"e":<epoch>,"s":<first seq>,"k":[<streams>],"x":[<stream of each frame>],"l":[<length of each frame>]}\n<frames>
 *
 * `k` lists the message's streams once each, `x` indexes it per frame, `l`
 * gives each frame's length in UTF-16 code units (what String#slice counts:
 * the receiver has the message as a string). The JSON part has no raw
 * newline (JSON.stringify escapes it), so the first "\n" ends it. `o` and `n`
 * let the publishing process recognise its own batch by the opening alone
 * (see OWN_OPENING) and deliver it from what it sent.
 */
export interface EncodedBatch {
  /** The frames' UTF-8 bytes, back to back. */
  readonly body: Buffer;
  /** Each frame's length in bytes (the server cuts the body with these). */
  readonly byteLengths: readonly number[];
  /** The batch's streams, each once, in the order they first appear. */
  readonly streams: readonly string[];
  /** Each frame's stream, as an index into `streams`. */
  readonly streamIndexes: readonly number[];
}

/** The batch's frames as one body, with their byte lengths and streams. */
export function encodeFrames(frames: readonly OutgoingFrame[]): EncodedBatch {
  const { body, byteLengths } = encodeBody(frames);
  const streamIndexes: number[] = new Array(frames.length);
  const streams = new StreamIndex();
  for (let i = 0; i < frames.length; i++) streamIndexes[i] = streams.of(frames[i]!.stream);
  return { body, byteLengths, streams: streams.names, streamIndexes };
}

/** The batch's frames as one body, with their byte lengths (`encodeFrames` without the streams). */
export function encodeBody(frames: readonly OutgoingFrame[]): Pick<EncodedBatch, "body" | "byteLengths"> {
  let chars = 0;
  for (let i = 0; i < frames.length; i++) chars += frames[i]!.frame.length;
  // a UTF-16 code unit is at most 3 bytes of UTF-8 (a surrogate pair, 2 units, is 4)
  const body = Buffer.allocUnsafe(chars * 3);
  const byteLengths: number[] = new Array(frames.length);
  let offset = 0;
  for (let i = 0; i < frames.length; i++) {
    const written = writeUtf8(body, frames[i]!.frame, offset);
    byteLengths[i] = written;
    offset += written;
  }
  return { body: body.subarray(0, offset), byteLengths };
}

/**
 * Buffer#write without its argument checks (a third of its cost at a batch's
 * thousands of frames): Buffer's own utf8Write, which it calls, where the
 * runtime has it.
 */
const writeUtf8: (buffer: Buffer, text: string, offset: number) => number =
  typeof (Buffer.prototype as { utf8Write?: unknown }).utf8Write === "function"
    ? (buffer, text, offset) =>
        (buffer as unknown as { utf8Write(t: string, o: number): number }).utf8Write(text, offset)
    : (buffer, text, offset) => buffer.write(text, offset);

/**
 * The end of a channel message's JSON part, from `"k"` on: the batch's
 * streams and each frame's stream index, as `encodeFrames` found them
 * (`indexes`: those joined with commas), each frame's length, and the
 * newline the body follows.
 */
export function batchTail(frames: readonly OutgoingFrame[], encoded: EncodedBatch, indexes: string): string {
  const lengths: number[] = new Array(frames.length);
  for (let i = 0; i < frames.length; i++) lengths[i] = frames[i]!.frame.length;
  return `"k":${JSON.stringify(encoded.streams)},"x":[${indexes}],"l":[${lengths.join(",")}]}\n`;
}

/** The start of a channel message's JSON part: who published the batch, and its number there. */
export function messageHead(origin: string, batch: number): string {
  return `{"o":"${origin}","n":${batch},`;
}

/**
 * A message's opening, as the publishing process recognises it: origin,
 * batch number, epoch, seq (the first; a PostgreSQL notice that names its
 * batch gives the last). Origins and epochs are base64url.
 */
export const OWN_OPENING = /^\{"o":"([A-Za-z0-9_-]+)","n":(\d+),"e":"([A-Za-z0-9_-]+)","s":(\d+),/;

/** How much of a message OWN_OPENING needs to see. */
export const OPENING_LENGTH = 200;

/**
 * The frames of a message's body, from its header's `k`, `x` and `l`
 * (`body` is the text after the header's newline); null when they do not
 * describe it.
 */
export function framesOfBody(
  header: Record<string, unknown>,
  body: string,
): Array<{ stream: string; frame: string }> | null {
  const { k: streams, x: indexes, l: lengths } = header;
  if (!Array.isArray(streams) || !Array.isArray(indexes) || !Array.isArray(lengths)) return null;
  if (indexes.length !== lengths.length) return null;
  if (!streams.every((s) => typeof s === "string")) return null;
  const frames: Array<{ stream: string; frame: string }> = new Array(lengths.length);
  let offset = 0;
  for (let i = 0; i < lengths.length; i++) {
    const length = lengths[i];
    const stream = streams[indexes[i] as number];
    if (typeof length !== "number" || !(length >= 0) || typeof stream !== "string") return null;
    frames[i] = { stream, frame: body.slice(offset, offset + length) };
    offset += length;
  }
  return offset === body.length ? frames : null;
}

/** A batch's distinct stream names in first-seen order: a frame carries its stream's index, not the name. */
class StreamIndex {
  readonly names: string[] = [];
  readonly #indexes = new Map<string, number>();

  of(stream: string): number {
    let index = this.#indexes.get(stream);
    if (index === undefined) {
      index = this.names.length;
      this.names.push(stream);
      this.#indexes.set(stream, index);
    }
    return index;
  }
}
