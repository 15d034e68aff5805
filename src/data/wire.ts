import type { Published } from "../brokers/broker.js";

/**
 * The wire forms of a data event (a frame of a data channel, whose `frame`
 * is the event's JSON):
 *
 *   WebSocket  {"type":"data","position":"<position>","event":{…}}
 *              on a shared connection with "for":"<subscription ids>" after the type
 *   SSE        event: turbocast-data / id: <position> / data: {…}
 *
 * The SSE event is named, so Turbo's `<turbo-stream-source>` (which listens
 * to "message") ignores it. A refresh frame on a data subscription (frames
 * were lost in a broker outage) comes as it is: a `<turbo-stream
 * action="refresh">` message, which tells a data client to sync again.
 */
export const DATA_SSE_EVENT = "turbocast-data";

/** The WebSocket text of a data event; `tags`: the shared connection's subscription ids it is for. */
export function dataWsText(frame: Published, tags?: string): string {
  const forIds = tags === undefined ? "" : `"for":${JSON.stringify(tags)},`;
  return `{"type":"data",${forIds}"position":${JSON.stringify(frame.position)},"event":${frame.frame}}`;
}

/** The SSE event of a data event (JSON is one line: JSON.stringify escapes line breaks). */
export function dataSseText(frame: Published): string {
  return `event: ${DATA_SSE_EVENT}\nid: ${frame.position}\ndata: ${frame.frame}\n\n`;
}
