import { cellStats } from "./report.js";
import type { Results } from "./results.js";

const COLORS: Record<string, string> = {
  "raw-tcp": "#b0b0b0",
  "bare-ws": "#6b7c8c",
  socketio: "#e8a33d",
  "tc-ws": "#1f6fb5",
  "tc-sse": "#5bb6e0",
  "tc-mux1": "#2e9e5b",
  "tc-mux5": "#8fce6b",
};

const esc = (s: string): string =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

/** A "nice" axis maximum and tick step for values up to `max`. */
function axis(max: number): { top: number; step: number } {
  const raw = max / 4;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? 10 * magnitude;
  return { top: Math.ceil(max / step) * step, step };
}

/**
 * The fan-out chart for the README: one panel per N (each with its own
 * scale), a bar per server at the median, a whisker up to p99.
 */
export function fanoutSvg(results: Results): string {
  const order = ["raw-tcp", "bare-ws", "socketio", "tc-ws", "tc-sse", "tc-mux1", "tc-mux5"];
  const ns = [...new Set(results.fanout.map((c) => c.n))].sort((a, b) => a - b);
  const present = order.filter((k) => results.fanout.some((c) => c.target === k));
  const panelW = 300;
  const width = Math.max(panelW * ns.length + 40, 640);
  const height = 380;
  const top = 78;
  const bottom = height - 46;
  const plotH = bottom - top;
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="-apple-system, Segoe UI, Helvetica, Arial, sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="20" y="24" font-size="15" font-weight="600" fill="#222">Publish to last delivery of one ~1 KB frame (ms, lower is better)</text>`,
    `<text x="20" y="42" fill="#555">bar: median, whisker: p99 — ${esc(results.env.mode ?? "")} run, ${esc((results.env.date ?? "").slice(0, 10))}, ${esc(results.env.cpus ?? "")}</text>`,
  );
  // legend
  let lx = 20;
  for (const k of present) {
    const label = results.labels[k] ?? k;
    parts.push(`<rect x="${lx}" y="52" width="12" height="12" fill="${COLORS[k] ?? "#888"}"/>`);
    parts.push(`<text x="${lx + 17}" y="62" fill="#333">${esc(label)}</text>`);
    lx += 24 + label.length * 6.8;
  }
  ns.forEach((n, i) => {
    const x0 = 20 + i * panelW + 44;
    const w = panelW - 64;
    // one slot per server in every panel, so a server sits in the same place throughout
    const cells = present
      .map((k, slotIndex) => {
        const cell = results.fanout.find((c) => c.target === k && c.n === n);
        return cell ? { k, slotIndex, s: cellStats(cell) } : null;
      })
      .filter((c): c is NonNullable<typeof c> => c !== null && Number.isFinite(c.s.p50));
    const max = Math.max(...cells.map((c) => (Number.isFinite(c.s.p99) ? c.s.p99 : c.s.p50)), 1);
    const { top: yMax, step } = axis(max);
    const y = (v: number): number => bottom - (v / yMax) * plotH;
    for (let v = 0; v <= yMax + 1e-9; v += step) {
      parts.push(`<line x1="${x0}" x2="${x0 + w}" y1="${y(v).toFixed(1)}" y2="${y(v).toFixed(1)}" stroke="#e4e4e4"/>`);
      parts.push(
        `<text x="${x0 - 6}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end" fill="#666">${+v.toFixed(2)}</text>`,
      );
    }
    parts.push(`<line x1="${x0}" x2="${x0 + w}" y1="${bottom}" y2="${bottom}" stroke="#999"/>`);
    const slot = w / Math.max(present.length, 1);
    const barW = Math.min(34, slot * 0.7);
    cells.forEach((c) => {
      const cx = x0 + slot * (c.slotIndex + 0.5);
      const color = COLORS[c.k] ?? "#888";
      parts.push(
        `<rect x="${(cx - barW / 2).toFixed(1)}" y="${y(c.s.p50).toFixed(1)}" width="${barW.toFixed(1)}" height="${(bottom - y(c.s.p50)).toFixed(1)}" fill="${color}"><title>${esc(results.labels[c.k] ?? c.k)}: median ${c.s.p50.toFixed(1)} ms, p99 ${c.s.p99.toFixed(1)} ms</title></rect>`,
      );
      if (Number.isFinite(c.s.p99)) {
        parts.push(
          `<line x1="${cx.toFixed(1)}" x2="${cx.toFixed(1)}" y1="${y(c.s.p50).toFixed(1)}" y2="${y(c.s.p99).toFixed(1)}" stroke="#333"/>`,
        );
        parts.push(
          `<line x1="${(cx - 5).toFixed(1)}" x2="${(cx + 5).toFixed(1)}" y1="${y(c.s.p99).toFixed(1)}" y2="${y(c.s.p99).toFixed(1)}" stroke="#333"/>`,
        );
      }
      parts.push(
        `<text x="${cx.toFixed(1)}" y="${(bottom + 14).toFixed(1)}" text-anchor="middle" fill="#333" font-size="11">${c.s.p50 < 10 ? c.s.p50.toFixed(1) : Math.round(c.s.p50)}</text>`,
      );
    });
    parts.push(
      `<text x="${x0 + w / 2}" y="${bottom + 34}" text-anchor="middle" font-weight="600" fill="#222">${n.toLocaleString("en-US")} subscribers</text>`,
    );
  });
  parts.push("</svg>");
  return `${parts.join("\n")}\n`;
}
