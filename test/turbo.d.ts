// @hotwired/turbo ships no types; the tests use only these two entry points.
declare module "@hotwired/turbo" {
  export function renderStreamMessage(html: string): void;
  export const StreamActions: Record<string, (this: Element) => void>;
}
