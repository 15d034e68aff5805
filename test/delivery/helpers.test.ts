import http from "node:http";
import nunjucks from "nunjucks";
import { eq } from "drizzle-orm";
import { afterEach, describe, expect, it } from "vitest";
import { ConfigError, InvalidStreamableError, MissingPrimaryKeyError, UnknownStreamError } from "../../src/errors.js";
import { LobbyStream, MessageStream, RoomStream, type TestApp, rooms, startApp, unescapeHtml } from "./fixture.js";

let app: TestApp | undefined;

afterEach(async () => {
  await app?.close();
  app = undefined;
});

/** The stream names a src subscribes to, checked against the app's signatures. */
function namesOf(src: string): string[] {
  const url = new URL(src, "http://x");
  return url.searchParams.getAll("s").map((t) => Buffer.from(t.split(".")[0]!, "base64url").toString("utf8"));
}

async function html(pathname: string, headers: Record<string, string> = {}): Promise<string> {
  return (await fetch(`${app!.url}${pathname}`, { headers })).text();
}

describe("turbo_stream_from", () => {
  it("renders one <turbo-stream-source> for a row and a plain name, SSE by default, attributes escaped", async () => {
    app = await startApp();
    const page = await html("/rooms/1");
    const tags = page.match(/<turbo-stream-source [^>]*><\/turbo-stream-source>/g) ?? [];
    expect(tags).toHaveLength(1);
    const raw = /src="([^"]*)"/.exec(tags[0]!)![1]!;
    // & in the URL is escaped in the attribute; no raw quote or angle bracket can appear
    expect(raw).toContain("&amp;");
    expect(raw).not.toMatch(/[<>"']|&(?!amp;)/);
    const src = unescapeHtml(raw);
    expect(src).toMatch(/^\/turbo-streams\?s=[^&]+&s=[^&]+&after=[A-Za-z0-9_-]+\.\d+$/);
    expect(namesOf(src)).toEqual([RoomStream.for(1).name, LobbyStream.for().name]);
    for (const t of new URL(src, "http://x").searchParams.getAll("s")) expect(app.turbo.signStreamName(namesOf(`?s=${t}`)[0]!)).toBe(t);
  });

  it("takes the position at request start, before the route reads its data", async () => {
    app = await startApp();
    const before = await app.turbo.broker.head();
    const src = await app.pageSrc("/rooms/1");
    expect(new URL(src, "http://x").searchParams.get("after")).toBe(before);
  });

  it("accepts ModelStream classes (table-wide), Stream instances, Stream classes, arrays and full names", async () => {
    app = await startApp();
    const tag = app.turbo.streamSource(null, [RoomStream, RoomStream.for(3), LobbyStream, [MessageStream.for(7)], "row:rooms:1", "lobby"]);
    const src = unescapeHtml(/src="([^"]*)"/.exec(tag)![1]!);
    expect(namesOf(src)).toEqual(["all:rooms", "row:rooms:3", "named:lobby", "row:messages:7", "row:rooms:1"]);
  });

  it("builds absolute ws:// URLs from the request, and wss:// behind a trusted proxy", async () => {
    app = await startApp();
    const forwarded = { "X-Forwarded-Proto": "https", "X-Forwarded-Host": "chat.example.com" };
    expect(await app.pageSrc("/rooms/1?transport=websocket", forwarded)).toMatch(
      new RegExp(`^ws://127\\.0\\.0\\.1:${app.port}/turbo-streams\\?s=`),
    );
    await app.close();
    app = await startApp({ trustProxy: true });
    expect(await app.pageSrc("/rooms/1?transport=websocket", forwarded)).toMatch(/^wss:\/\/chat\.example\.com\/turbo-streams\?s=/);
  });

  it("escapes a hostile Host header in the WebSocket URL", async () => {
    app = await startApp({ transport: "websocket" });
    // fetch() may not set Host: a raw request can
    const page = await new Promise<string>((resolve, reject) => {
      http
        .get(`${app!.url}/lobby`, { headers: { Host: `evil.example"><script>x</script>` } }, (res) => {
          let body = "";
          res.setEncoding("utf8").on("data", (chunk: string) => (body += chunk)).on("end", () => resolve(body));
        })
        .on("error", reject);
    });
    expect(page).toContain("<turbo-stream-source");
    expect(page).not.toContain("<script>");
    expect(page).toContain("evil.example&quot;&gt;&lt;script&gt;");
  });

  it("uses the app's default transport unless a call picks one", async () => {
    app = await startApp({ transport: "websocket" });
    expect(await app.pageSrc("/lobby")).toMatch(/^ws:\/\//);
    // room.njk passes transport explicitly: sse when not asked for websocket
    expect(await app.pageSrc("/rooms/1")).toMatch(/^\/turbo-streams\?/);
  });

  it("throws when given nothing, or something that is not a streamable", async () => {
    app = await startApp();
    expect(() => app!.turbo.streamSource(null, [])).toThrow(InvalidStreamableError);
    expect(() => app!.turbo.streamSource(null, [{ name: "plain object" }])).toThrow(InvalidStreamableError);
    expect(() => app!.turbo.streamSource(null, [undefined as unknown as object])).toThrow(InvalidStreamableError);
    expect(() => app!.turbo.streamSource(null, ["no-such-stream"])).toThrow(UnknownStreamError);
    expect(() => app!.turbo.views.render("none.njk", {})).toThrow(/at least one streamable/);
    const many = Array.from({ length: 21 }, (_, i) => RoomStream.for(i + 1));
    expect(() => app!.turbo.streamSource(null, many)).toThrow(/at most 20/);
  });

  it("throws MissingPrimaryKeyError for a row without its primary key", async () => {
    app = await startApp();
    const row = app.db.select().from(rooms).where(eq(rooms.id, 1)).get()! as { id: number | null };
    expect(() => app!.turbo.streamSource(null, [row])).not.toThrow();
    row.id = null;
    let thrown: unknown;
    try {
      app.turbo.streamSource(null, [row]);
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(MissingPrimaryKeyError);
    expect((thrown as MissingPrimaryKeyError).code).toBe("TURBOCAST_MISSING_PRIMARY_KEY");
    expect(() => app!.turbo.views.render("row.njk", { row })).toThrow(/no value for its primary key/);
  });

  it("renders outside a request (in a hook's template) with the newest position, SSE only", async () => {
    app = await startApp();
    const published = await LobbyStream.for().remove({ target: "x" });
    const markup = app.turbo.views.render("lobby.njk", {});
    const src = unescapeHtml(/src="([^"]*)"/.exec(markup)![1]!);
    expect(new URL(src, "http://x").searchParams.get("after")).toBe(published.position);
    const env = app.turbo.views as nunjucks.Environment;
    expect(() => env.renderString(`{{ turbo_stream_from("lobby", transport="websocket") }}`, {})).toThrow(/needs the request/);
    expect(() => app!.turbo.streamSource(null, ["lobby"], { transport: "websocket" })).toThrow(ConfigError);
    expect(() => env.renderString(`{{ turbo_stream_from("lobby", transprot="websocket") }}`, {})).toThrow(/unknown keyword/);
  });

  it("records X-Turbo-Request-Id, so a refresh broadcast while handling the request names it", async () => {
    app = await startApp({ refreshDebounceMs: 1 });
    app.app.post("/rooms/:id/touch", async (req, res) => {
      const published = await RoomStream.for(Number(req.params.id)).refresh();
      res.json({ frame: published.frame, requestId: res.locals.turbocast.requestId });
    });
    const response = await fetch(`${app.url}/rooms/1/touch`, { method: "POST", headers: { "X-Turbo-Request-Id": "3f1c9a2e-5b7d-4c1e-9f0a-1b2c3d4e5f60" } });
    const body = (await response.json()) as { frame: string; requestId: string };
    expect(body.requestId).toBe("3f1c9a2e-5b7d-4c1e-9f0a-1b2c3d4e5f60");
    expect(body.frame).toBe('<turbo-stream action="refresh" request-id="3f1c9a2e-5b7d-4c1e-9f0a-1b2c3d4e5f60"></turbo-stream>');
  });
});
