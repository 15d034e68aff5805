const ATTRIBUTE_ESCAPES: Record<string, string> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&#39;",
};

/**
 * The one escaping function for text that lands in an HTML attribute value
 * (or in text content). Escapes all five of `& < > " '` — escaping only `&`
 * and `<`, as some servers do, leaves quoted attributes open to injection.
 */
export function escapeHtml(value: string): string {
  return value.replace(/[&<>"']/g, (ch) => ATTRIBUTE_ESCAPES[ch]!);
}
