import http from "node:http";
import Database from "better-sqlite3";
import { eq } from "drizzle-orm";
import type nunjucks from "nunjucks";
import { afterEach, describe, expect, it } from "vitest";
import { ConfigError, InvalidStreamableError, MissingPrimaryKeyError, UnknownStreamError } from "../../src/errors.js";
import { runInRequest } from "../../src/delivery/request-context.js";
import { ModelStream } from "../../src/index.js";
import { LobbyStream, MessageStream, RoomStream, type TestApp, messages, rooms, startApp } from "./fixture.js";
import { unescapeHtml, waitFor } from "../helpers.js";

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
    // p=: the id of the page, sent back by the client script with the page's requests (toOthers)
    expect(src).toMatch(/^\/turbo-streams\?s=[^&]+&s=[^&]+&after=[A-Za-z0-9_-]+\.\d+&p=[A-Za-z0-9_-]{22}$/);
    expect(namesOf(src)).toEqual([RoomStream.for(1).name, LobbyStream.for().name]);
    for (const t of new URL(src, "http://x").searchParams.getAll("s"))
      expect(app.turbo.signStreamName(namesOf(`?s=${t}`)[0]!)).toBe(t);
  });

  it("takes the position at request start, before the route reads its data", async () => {
    app = await startApp();
    const before = await app.turbo.broker.head();
    const src = await app.pageSrc("/rooms/1");
    expect(new URL(src, "http://x").searchParams.get("after")).toBe(before);
  });

  it("accepts ModelStream classes (table-wide), Stream instances, Stream classes, arrays and full names", async () => {
    app = await startApp();
    const tag = app.turbo.streamSource(null, [
      RoomStream,
      RoomStream.for(3),
      LobbyStream,
      [MessageStream.for(7)],
      "row:rooms:1",
      "lobby",
    ]);
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
    expect(await app.pageSrc("/rooms/1?transport=websocket", forwarded)).toMatch(
      /^wss:\/\/chat\.example\.com\/turbo-streams\?s=/,
    );
  });

  it("escapes a hostile Host header in the WebSocket URL", async () => {
    app = await startApp({ transport: "websocket" });
    // fetch() may not set Host: a raw request can
    const page = await new Promise<string>((resolve, reject) => {
      http
        .get(`${app!.url}/lobby`, { headers: { Host: `evil.example"><script>x</script>` } }, (res) => {
          let body = "";
          res
            .setEncoding("utf8")
            .on("data", (chunk: string) => (body += chunk))
            .on("end", () => resolve(body));
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
    expect(() => env.renderString(`{{ turbo_stream_from("lobby", transport="websocket") }}`, {})).toThrow(
      /needs the request/,
    );
    expect(() => app!.turbo.streamSource(null, ["lobby"], { transport: "websocket" })).toThrow(ConfigError);
    expect(() => env.renderString(`{{ turbo_stream_from("lobby", transprot="websocket") }}`, {})).toThrow(
      /unknown keyword/,
    );
  });

  it("records X-Turbo-Request-Id, so a refresh broadcast while handling the request names it", async () => {
    app = await startApp({ refreshDebounceMs: 1 });
    app.app.post("/rooms/:id/touch", async (req, res) => {
      const published = await RoomStream.for(Number(req.params.id)).refresh();
      res.json({ frame: published.frame, requestId: res.locals.turbocast.requestId });
    });
    const response = await fetch(`${app.url}/rooms/1/touch`, {
      method: "POST",
      headers: { "X-Turbo-Request-Id": "3f1c9a2e-5b7d-4c1e-9f0a-1b2c3d4e5f60" },
    });
    const body = (await response.json()) as { frame: string; requestId: string };
    expect(body.requestId).toBe("3f1c9a2e-5b7d-4c1e-9f0a-1b2c3d4e5f60");
    expect(body.frame).toBe(
      '<turbo-stream action="refresh" request-id="3f1c9a2e-5b7d-4c1e-9f0a-1b2c3d4e5f60"></turbo-stream>',
    );
  });
});

/** A hook that refreshes the message's room page, as `broadcasts_refreshes` does in turbo-rails. */
class RefreshingMessageStream extends ModelStream<typeof messages> {
  static override model = messages;
  override async onSave(message: typeof messages.$inferSelect): Promise<void> {
    await RoomStream.for(message.roomId).refresh();
  }
}

describe("refreshes broadcast by hooks of captured writes", () => {
  it("carry the X-Turbo-Request-Id of the request that made the write, and only that one", async () => {
    app = await startApp({ refreshDebounceMs: 1, streams: [RoomStream, RefreshingMessageStream, LobbyStream] });
    const frames: string[] = [];
    await app.turbo.hub.subscribe([RoomStream.for(1).name], { send: (published) => void frames.push(published.frame) });
    const db = app.db;
    app.app.post("/say", (req, res) => {
      db.insert(messages)
        .values({ roomId: 1, body: String(req.query.body) })
        .run();
      res.sendStatus(204);
    });
    app.app.post("/fail", (_req, res) => {
      try {
        db.transaction((tx) => {
          tx.insert(messages).values({ id: 50, roomId: 1, body: "the same row" }).run();
          throw new Error("validation failed");
        });
      } catch {
        res.sendStatus(422);
      }
    });
    const post = (pathname: string, requestId?: string) =>
      fetch(`${app!.url}${pathname}`, {
        method: "POST",
        headers: requestId ? { "X-Turbo-Request-Id": requestId } : {},
      });
    const next = async (): Promise<string> => {
      const count = frames.length;
      await waitFor(() => frames.length > count);
      return frames.at(-1)!;
    };

    let frame = next();
    expect((await post("/say?body=a", "3f1c9a2e-5b7d-4c1e-9f0a-1b2c3d4e5f60")).status).toBe(204);
    expect(await frame).toBe(
      '<turbo-stream action="refresh" request-id="3f1c9a2e-5b7d-4c1e-9f0a-1b2c3d4e5f60"></turbo-stream>',
    );

    frame = next();
    await post("/say?body=b");
    expect(await frame).toBe('<turbo-stream action="refresh"></turbo-stream>');

    // a write by another connection (another process, the shell) names no request
    const other = new Database(app.sqlite.name);
    try {
      frame = next();
      other.prepare("INSERT INTO messages (room_id, body) VALUES (1, 'from elsewhere')").run();
      expect(await frame).toBe('<turbo-stream action="refresh"></turbo-stream>');

      // a rolled-back write's seq is reused by the next write: the same row, by someone else, inherits nothing
      const seqBefore = app.sqlite.prepare("SELECT max(seq) FROM _turbocast_changes").pluck().get() as number;
      expect((await post("/fail", "req-rolled-back")).status).toBe(422);
      frame = next();
      other.prepare("INSERT INTO messages (id, room_id, body) VALUES (50, 1, 'the same row')").run();
      expect(await frame).toBe('<turbo-stream action="refresh"></turbo-stream>');
      expect(app.sqlite.prepare("SELECT max(seq) FROM _turbocast_changes").pluck().get()).toBe(seqBefore + 1);

      // drain() awaited inside a request dispatches others' changes outside it
      frame = next();
      const poll = app.turbo.feed;
      await runInRequest({ requestId: "req-drainer" }, async () => {
        other.prepare("INSERT INTO messages (room_id, body) VALUES (1, 'drained in a request')").run();
        await poll.drain();
      });
      expect(await frame).toBe('<turbo-stream action="refresh"></turbo-stream>');
    } finally {
      other.close();
    }
    expect(frames).toHaveLength(5);
    expect(app.logger.entries.filter((e) => e.level !== "info")).toEqual([]);
    // close() takes its TEMP trigger and table away
    const temp = () =>
      app!.sqlite
        .prepare("SELECT name FROM sqlite_temp_schema WHERE name LIKE '\\_turbocast\\_%' ESCAPE '\\'")
        .pluck()
        .all();
    expect((temp() as string[]).sort()).toEqual(["_turbocast_request_note", "_turbocast_request_notes"]);
    await app.turbo.close();
    expect(temp()).toEqual([]);
  });
});
