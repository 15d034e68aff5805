import Database from "better-sqlite3";
import { drizzle } from "drizzle-orm/better-sqlite3";
import nunjucks from "nunjucks";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  type Published,
  type Turbo,
  DuplicateBindingError,
  MissingPrimaryKeyError,
  ModelStream,
  NoPrimaryKeyTableError,
  NotBoundError,
  StreamModuleError,
  TemplateRenderError,
  createTurbo,
} from "../src/index.js";
import { discoverStreams, listStreamModules } from "../src/streams/discover.js";
import { parseStreamName } from "../src/streams/names.js";
import { StreamRegistry } from "../src/streams/registry.js";
import { LobbyStream, RoomStream } from "./fixtures/streams-basic/rooms.js";
import { MembershipStream, MessageStream } from "./fixtures/streams-basic/nested/messages.js";
import { DDL, auditLog, schema } from "./fixtures/schema.js";
import { silentLogger } from "../src/logger.js";
import { tempDir } from "./helpers.js";

const fixtures = path.join(import.meta.dirname, "fixtures");

describe("stream names", () => {
  it("derive a row's stream from the table and its key", () => {
    expect(RoomStream.for(7).name).toBe("row:rooms:7");
    expect(RoomStream.for({ id: 7, name: "x", isPrivate: false }).name).toBe("row:rooms:7");
    expect(RoomStream.for(7).pk).toBe(7);
  });

  it("order composite keys by the key's declared order, whatever the object's order", () => {
    const a = MembershipStream.for({ roomId: 3, userName: "ann" });
    const b = MembershipStream.for({ userName: "ann", roomId: 3, role: "owner" });
    expect(a.name).toBe("row:members:ann:3");
    expect(b.name).toBe(a.name);
    expect(a.pk).toEqual({ userName: "ann", roomId: 3 });
  });

  it("give the table-wide stream and plain streams their own namespaces", () => {
    expect(RoomStream.all().name).toBe("all:rooms");
    expect(RoomStream.all().isAll).toBe(true);
    expect(LobbyStream.for().name).toBe("named:lobby");
    expect(LobbyStream.for("a:b").name).toBe("named:lobby:a%3Ab");
  });

  it("percent-encode key parts so a key cannot forge another stream", () => {
    expect(MembershipStream.for({ roomId: 1, userName: "x:2" }).name).toBe("row:members:x%3A2:1");
    expect(parseStreamName("row:members:x%3A2:1")).toEqual({ kind: "row", prefix: "members", parts: ["x:2", "1"] });
    expect(parseStreamName("bogus:1")).toBeNull();
    expect(parseStreamName("row:rooms")).toBeNull();
    expect(parseStreamName("all:rooms:1")).toBeNull();
    expect(parseStreamName("row:%E0%A4%A:1")).toBeNull();
  });

  it("let a class override its prefix", () => {
    expect(MembershipStream.baseName()).toBe("members");
    expect(MessageStream.baseName()).toBe("messages");
  });
});

describe("a row without a primary key", () => {
  for (const [label, value] of [
    ["undefined", undefined],
    ["null", null],
    ["a row whose id is undefined", { id: undefined, name: "x" }],
    ["a row whose id is null", { id: null, name: "x" }],
  ] as const) {
    it(`throws MissingPrimaryKeyError from .for(${label})`, () => {
      let error: unknown;
      try {
        // @ts-expect-error what a JavaScript caller can pass: TypeScript refuses it, the run time throws
        RoomStream.for(value);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(MissingPrimaryKeyError);
      expect((error as MissingPrimaryKeyError).code).toBe("TURBOCAST_MISSING_PRIMARY_KEY");
      expect((error as Error).message).toContain('table "rooms"');
    });
  }

  it("throws for a composite key with a part missing", () => {
    expect(() => MembershipStream.for({ roomId: 1 })).toThrow(MissingPrimaryKeyError);
    // @ts-expect-error a composite key takes { column: value }, not a scalar
    expect(() => MembershipStream.for(1)).toThrow(/composite key/);
  });
});

describe("registry", () => {
  it("refuses a second ModelStream for one table, naming both classes", () => {
    class Again extends ModelStream<typeof schema.rooms> {
      static override model = schema.rooms;
    }
    const registry = new StreamRegistry();
    registry.register(RoomStream);
    expect(() => registry.register(Again)).toThrow(DuplicateBindingError);
    expect(() => registry.register(Again)).toThrow(/RoomStream and Again/);
  });

  it("refuses a table without a primary key", () => {
    class Audit extends ModelStream<typeof auditLog> {
      static override model = auditLog;
    }
    expect(() => new StreamRegistry().register(Audit)).toThrow(NoPrimaryKeyTableError);
  });

  it("resolves names back to streams with typed keys, and refuses names it does not serve", () => {
    const registry = new StreamRegistry();
    for (const cls of [RoomStream, MembershipStream, LobbyStream]) registry.register(cls);
    const room = registry.resolve("row:rooms:7") as InstanceType<typeof RoomStream>;
    expect(room).toBeInstanceOf(RoomStream);
    expect(room.pk).toBe(7);
    expect((registry.resolve("row:members:ann:3") as InstanceType<typeof MembershipStream>).pk).toEqual({
      userName: "ann",
      roomId: 3,
    });
    expect(registry.resolve("all:rooms")).toBeInstanceOf(RoomStream);
    expect(registry.resolve("named:lobby")).toBeInstanceOf(LobbyStream);
    for (const bad of ["row:rooms:abc", "row:rooms:007", "row:nope:1", "named:nope", "row:members:ann", "x"]) {
      expect(() => registry.resolve(bad), bad).toThrow(/no registered stream/);
    }
  });
});

describe("discovery of the streams folder", () => {
  it("imports nested modules and skips _-prefixed and test files", async () => {
    const files = (await listStreamModules(path.join(fixtures, "streams-basic"))).map((f) =>
      path.relative(fixtures, f),
    );
    expect(files).toEqual(["streams-basic/nested/messages.ts", "streams-basic/rooms.ts"]);
    const classes = await discoverStreams(path.join(fixtures, "streams-basic"));
    expect(classes.map((c) => c.name).sort()).toEqual([
      "LobbyStream",
      "MembershipStream",
      "MessageStream",
      "RoomStream",
    ]);
  });

  it("reports a module that throws, naming the file and the cause", async () => {
    const error = await discoverStreams(path.join(fixtures, "streams-throws")).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StreamModuleError);
    expect((error as StreamModuleError).code).toBe("TURBOCAST_STREAM_MODULE_FAILED");
    expect((error as Error).message).toMatch(/broken\.ts: boom at import/);
    expect((error as Error).cause).toBeInstanceOf(Error);
  });

  it("tells a plain-Node app that cannot import a .ts stream module to run with tsx", () => {
    const cause = Object.assign(new TypeError('Unknown file extension ".ts" for /app/streams/notes.ts'), {
      code: "ERR_UNKNOWN_FILE_EXTENSION",
    });
    expect(new StreamModuleError("/app/streams/notes.ts", cause).message).toMatch(
      /notes\.ts: Unknown file extension "\.ts".*run the app with tsx/,
    );
    expect(new StreamModuleError("/app/streams/notes.js", new Error("boom")).message).not.toMatch(/tsx/);
  });
});

describe("createTurbo and broadcasts", () => {
  let turbo: Turbo;
  let frames: Published[];
  let cleanup: () => void;
  let sqlite: Database.Database;
  let renders: number;

  beforeEach(async () => {
    const tmp = tempDir();
    cleanup = tmp.cleanup;
    sqlite = new Database(path.join(tmp.dir, "app.db"));
    sqlite.exec(DDL);
    const db = drizzle(sqlite, { schema });
    const env = new nunjucks.Environment(new nunjucks.FileSystemLoader(path.join(fixtures, "views")), {
      autoescape: true,
    });
    renders = 0;
    const render = env.render.bind(env);
    env.render = ((name: string, ctx: object) => {
      renders++;
      return render(name, ctx);
    }) as typeof env.render;
    turbo = await createTurbo({
      db,
      views: env,
      streams: path.join(fixtures, "streams-basic"),
      logger: silentLogger,
      refreshDebounceMs: 20,
    });
    frames = [];
    await turbo.hub.subscribe(["row:rooms:1", "all:rooms", "named:lobby"], { send: (f) => frames.push(f) });
  });

  afterEach(async () => {
    await turbo.close();
    sqlite.close();
    cleanup();
  });

  it("renders the template once and publishes one frame with a position", async () => {
    const published = await RoomStream.for(1).append(
      "messages/_message.njk",
      { message: { id: 5, roomId: 1, body: "hi" } },
      { target: "messages" },
    );
    expect(renders).toBe(1);
    expect(published.position).toMatch(/^[\w-]+\.\d+$/);
    expect(frames.map((f) => f.frame)).toEqual([
      `<turbo-stream action="append" target="messages"><template><li id="message_5" data-room="1">hi</li>\n</template></turbo-stream>`,
    ]);
  });

  it("escapes a <script> in the context: it arrives as text", async () => {
    await RoomStream.for(1).append(
      "messages/_message.njk",
      { message: { id: 1, roomId: `1" onclick="x`, body: "<script>alert(1)</script>" } },
      { target: "messages" },
    );
    expect(frames[0]!.frame).toContain("&lt;script&gt;alert(1)&lt;/script&gt;");
    expect(frames[0]!.frame).toContain('data-room="1&quot; onclick=&quot;x"');
    expect(frames[0]!.frame).not.toContain("<script>");
  });

  it("offers every action on a stream", async () => {
    const room = RoomStream.for(1);
    const ctx = { message: { id: 1, roomId: 1, body: "b" } };
    await room.prepend("messages/_message.njk", ctx, { target: "messages" });
    await room.replace("messages/_message.njk", ctx, { target: "message_1", method: "morph" });
    await room.update("messages/_message.njk", ctx, { targets: "#messages" });
    await room.before("messages/_message.njk", ctx, { target: "message_1" });
    await room.after("messages/_message.njk", ctx, { target: "message_1" });
    await room.remove({ target: "message_1" });
    await room.action("notify", { target: "flash", attributes: { "data-level": "info" } });
    await room.broadcastRaw(`<turbo-stream action="remove" target="x"></turbo-stream>`);
    const heads = frames.map((f) => f.frame.slice(0, f.frame.indexOf(">") + 1));
    expect(heads).toEqual([
      `<turbo-stream action="prepend" target="messages">`,
      `<turbo-stream action="replace" target="message_1" method="morph">`,
      `<turbo-stream action="update" targets="#messages">`,
      `<turbo-stream action="before" target="message_1">`,
      `<turbo-stream action="after" target="message_1">`,
      `<turbo-stream action="remove" target="message_1">`,
      `<turbo-stream action="notify" target="flash" data-level="info">`,
      `<turbo-stream action="remove" target="x">`,
    ]);
    const seqs = frames.map((f) => f.seq);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
  });

  it("debounces refresh into one frame per window", async () => {
    const stream = RoomStream.for(1);
    const [a, b, c] = await Promise.all([stream.refresh(), stream.refresh(), stream.refresh()]);
    expect(a).toBe(b);
    expect(b).toBe(c);
    expect(frames.map((f) => f.frame)).toEqual([`<turbo-stream action="refresh"></turbo-stream>`]);
  });

  it("throws before rendering or publishing when the row has no key", async () => {
    expect(() =>
      // @ts-expect-error a row not inserted yet (a JavaScript caller's): TypeScript refuses it, the run time throws
      RoomStream.for({ id: undefined, name: "new" }).append("messages/_message.njk", {}, { target: "messages" }),
    ).toThrow(MissingPrimaryKeyError);
    expect(renders).toBe(0);
    expect(frames).toEqual([]);
  });

  it("misuse fails at once with a precise message", () => {
    const room = RoomStream.for(1);
    expect(() => room.append("messages/_message.njk", {}, {} as { target: string })).toThrow(
      "append needs exactly one of target or targets",
    );
    expect(() => room.broadcastRaw("<p>not a frame</p>")).toThrow(/complete <turbo-stream>/);
    expect(renders).toBe(0);
  });

  it("a template that throws is a TemplateRenderError and publishes nothing", async () => {
    let error: unknown;
    try {
      await RoomStream.for(1).update("broken.njk", {}, { target: "x" });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(TemplateRenderError);
    expect((error as TemplateRenderError).code).toBe("TURBOCAST_TEMPLATE_FAILED");
    expect((error as Error).message).toContain('"broken.njk"');
    expect(frames).toEqual([]);
  });

  it("table-wide and plain streams broadcast to their own subscribers", async () => {
    await RoomStream.all().append(
      "messages/_message.njk",
      { message: { id: 1, roomId: 1, body: "x" } },
      { target: "rooms" },
    );
    await LobbyStream.for().remove({ target: "x" });
    await RoomStream.for(2).remove({ target: "y" });
    expect(frames.map((f) => f.stream)).toEqual(["all:rooms", "named:lobby"]);
  });

  it("close() unbinds the classes", async () => {
    await turbo.close();
    expect(() => RoomStream.for(1).remove({ target: "x" })).toThrow(NotBoundError);
  });
});

describe("createTurbo startup errors", () => {
  it("fails on a duplicate binding and leaves the database untouched", async () => {
    const sqlite = new Database(":memory:");
    const db = drizzle(sqlite);
    const error = await createTurbo({
      db,
      views: new nunjucks.Environment(null, { autoescape: true }),
      streams: path.join(fixtures, "streams-duplicate"),
      logger: silentLogger,
    }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DuplicateBindingError);
    expect((error as Error).message).toMatch(/RoomStream and OtherRoomStream/);
    // nothing was instrumented: a second createTurbo on the same db may start
    const turbo = await createTurbo({
      db,
      views: new nunjucks.Environment(null, { autoescape: true }),
      streams: [RoomStream],
      logger: silentLogger,
    });
    await turbo.close();
    sqlite.close();
  });

  it("fails when a bound table has no primary key", async () => {
    const sqlite = new Database(":memory:");
    const error = await createTurbo({
      db: drizzle(sqlite),
      views: new nunjucks.Environment(null, { autoescape: true }),
      streams: path.join(fixtures, "streams-nopk"),
      logger: silentLogger,
    }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(NoPrimaryKeyTableError);
    expect((error as NoPrimaryKeyTableError).code).toBe("TURBOCAST_TABLE_WITHOUT_PRIMARY_KEY");
    sqlite.close();
  });

  it("refuses a nunjucks Environment with autoescape off", async () => {
    const sqlite = new Database(":memory:");
    await expect(
      createTurbo({
        db: drizzle(sqlite),
        views: new nunjucks.Environment(null, { autoescape: false }),
        streams: [],
        logger: silentLogger,
      }),
    ).rejects.toThrow(/autoescape/);
    sqlite.close();
  });
});
