/**
 * A stream's data channel: the broker/hub name its data events travel
 * under. Data subscribers subscribe to it, HTML subscribers never do, and no
 * stream name parses as one (names start with row:, all: or named:), so a
 * signed stream name gives access to both and nothing can forge the other.
 */
export const DATA_PREFIX = "data:";

export function dataChannel(stream: string): string {
  return DATA_PREFIX + stream;
}

export function isDataChannel(name: string): boolean {
  return name.startsWith(DATA_PREFIX);
}
