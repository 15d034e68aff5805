/**
 * The payload every server under test sends: one ~1 KB `<turbo-stream>`
 * frame carrying a broadcast id after a marker, so a client can tell which
 * broadcast a message belongs to without parsing the markup.
 */
export const MARK = "bench-id:";
const MARK_BYTES = Buffer.from(MARK, "latin1");
export const FRAME_BYTES = 1024;

const FILLER_WORDS =
  "Lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua ";

/** Text of `length` characters (plain ASCII, nothing to escape). */
export function filler(length: number): string {
  return FILLER_WORDS.repeat(Math.ceil(length / FILLER_WORDS.length)).slice(0, length);
}

function frameWith(id: number, body: string): string {
  return (
    `<turbo-stream action="append" target="messages"><template>` +
    `<div id="message_${id}" class="message" data-bench="${MARK}${id};"><p>${body}</p></div>` +
    `</template></turbo-stream>`
  );
}

const BODY = filler(FRAME_BYTES - frameWith(0, "").length - 4);

/** The ~1 KB frame of broadcast `id` (within a few bytes of FRAME_BYTES). */
export function benchFrame(id: number): string {
  return frameWith(id, BODY);
}

/** The message body the template-rendering paths use, so their frames are the same size. */
export const MESSAGE_BODY = BODY;

/** The broadcast id in a received message, or -1 when it carries none (a heartbeat, a handshake). */
export function broadcastId(data: Buffer, from = 0): number {
  const at = data.indexOf(MARK_BYTES, from);
  if (at < 0) return -1;
  let i = at + MARK_BYTES.length;
  let id = 0;
  let digits = 0;
  for (; i < data.length; i++) {
    const c = data[i]!;
    if (c < 48 || c > 57) break;
    id = id * 10 + (c - 48);
    digits++;
  }
  return digits === 0 ? -1 : id;
}
