import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { eq } from "drizzle-orm";
import { drizzle } from "drizzle-orm/better-sqlite3";
import nunjucks from "nunjucks";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  BroadcastConfigError,
  ModelStream,
  type Turbo,
  type TurboOptions,
  createTurbo,
  domId,
  singularize,
} from "../src/index.js";
import { type CapturedBroadcast, assertBroadcasts, assertNoBroadcasts, captureBroadcasts } from "../src/testing.js";
import { DDL, boards, cards, labels, notes, schema } from "./fixtures/declarative/schema.js";
import {
  ArchiveStream,
  BoardStream,
  CardStream,
  NoteStream,
  TEMPLATES,
  cardHooks,
  declarativeStreams,
} from "./fixtures/declarative/streams.js";
import { type LogEntry, memoryLogger, tempDir } from "./helpers.js";

interface App {
  sqlite: Database.Database;
  db: ReturnType<typeof drizzle<typeof schema>>;
  turbo: Turbo;
  log: LogEntry[];
  file: string;
}

let tmp: { dir: string; cleanup: () => void };
let app: App | undefined;

function writeTemplates(dir: string, templates: Record<string, string>): string {
  const views = path.join(dir, "views");
  for (const [name, text] of Object.entries(templates)) {
    mkdirSync(path.dirname(path.join(views, name)), { recursive: true });
    writeFileSync(path.join(views, name), text);
  }
  return views;
}

async function openApp(options: Partial<TurboOptions> = {}, templates = TEMPLATES): Promise<App> {
  const file = path.join(tmp.dir, "app.db");
  const sqlite = new Database(file);
  sqlite.pragma("journal_mode = WAL");
  sqlite.exec(DDL);
  const db = drizzle(sqlite, { schema });
  const logger = memoryLogger();
  const env = new nunjucks.Environment(new nunjucks.FileSystemLoader(writeTemplates(tmp.dir, templates)), {
    autoescape: true,
  });
  const turbo = await createTurbo({
    db,
    views: env,
    streams: declarativeStreams,
    logger,
    secret: "declarative-test-secret-0123456789abcdef",
    ...options,
  });
  app = { sqlite, db, turbo, log: logger.entries, file };
  return app;
}

const board = (id: number) => BoardStream.for(id).name;
const short = (f: CapturedBroadcast): string => `${f.stream} ${f.action} ${f.target ?? f.targets}`;

beforeEach(() => {
  tmp = tempDir("turbocast-declarative-");
  cardHooks.reset();
});

afterEach(async () => {
  await app?.turbo.close();
  app?.sqlite.close();
  app = undefined;
  tmp.cleanup();
});

describe("broadcastsTo", () => {
  it("inserts a created row into its stream, replaces it where it stays, removes a deleted one", async () => {
    const { turbo, db } = await openApp();
    const created = await captureBroadcasts(turbo, () =>
      db.insert(cards).values({ id: 1, boardId: 1, title: "first <card>" }).run(),
    );
    expect(created.map(short)).toEqual([`${board(1)} append cards`]);
    expect(created[0]!.html).toBe('<li id="card_1">first &lt;card&gt;</li>');

    const updated = await captureBroadcasts(turbo, () =>
      db.update(cards).set({ title: "renamed" }).where(eq(cards.id, 1)).run(),
    );
    expect(updated.map(short)).toEqual([`${board(1)} replace card_1`]);
    expect(updated[0]!.html).toBe('<li id="card_1">renamed</li>');

    const deleted = await captureBroadcasts(turbo, () => db.delete(cards).where(eq(cards.id, 1)).run());
    expect(deleted.map(short)).toEqual([`${board(1)} remove card_1`]);
  });

  it("moves a row between two parents: remove on the old stream and insert on the new one, exactly once each", async () => {
    const { turbo, db } = await openApp();
    db.insert(cards).values({ id: 7, boardId: 1, title: "moving" }).run();
    await turbo.feed.drain();
    const moved = await captureBroadcasts(turbo, () =>
      db.update(cards).set({ boardId: 2 }).where(eq(cards.id, 7)).run(),
    );
    expect(moved.map(short)).toEqual([`${board(1)} remove card_7`, `${board(2)} append cards`]);
    expect(moved[1]!.html).toContain('id="card_7"');
  });

  it("removes a row that leaves the list's scope, and inserts it again when it comes back", async () => {
    const { turbo, db } = await openApp();
    db.insert(cards).values({ id: 3, boardId: 1, title: "in scope" }).run();
    await turbo.feed.drain();
    const left = await captureBroadcasts(turbo, () =>
      db.update(cards).set({ archived: true }).where(eq(cards.id, 3)).run(),
    );
    expect(left.map(short)).toEqual([`${board(1)} remove card_3`]);
    // out of scope, an edit reaches no list
    await assertNoBroadcasts(turbo, () =>
      db.update(cards).set({ title: "archived edit" }).where(eq(cards.id, 3)).run(),
    );
    const back = await captureBroadcasts(turbo, () =>
      db.update(cards).set({ archived: false }).where(eq(cards.id, 3)).run(),
    );
    expect(back.map(short)).toEqual([`${board(1)} append cards`]);
    expect(back[0]!.html).toContain("archived edit");
    // created out of scope: nothing
    await assertNoBroadcasts(turbo, () =>
      db.insert(cards).values({ id: 4, boardId: 1, title: "born archived", archived: true }).run(),
    );
  });

  it("moves 1,000 rows with one raw-SQL UPDATE: each removed from the old board and appended to the new one once", async () => {
    const { turbo, sqlite } = await openApp();
    const insert = sqlite.prepare("INSERT INTO cards (id, board_id, title) VALUES (?, 1, ?)");
    sqlite.transaction(() => {
      for (let i = 1; i <= 1000; i++) insert.run(i, `card ${i}`);
    })();
    await turbo.feed.drain();
    const frames = await captureBroadcasts(turbo, () => sqlite.exec("UPDATE cards SET board_id = 2"));
    const removes = frames.filter((f) => f.stream === board(1));
    const appends = frames.filter((f) => f.stream === board(2));
    expect(frames).toHaveLength(2000);
    expect(removes.every((f) => f.action === "remove")).toBe(true);
    expect(appends.every((f) => f.action === "append" && f.target === "cards")).toBe(true);
    const ids = Array.from({ length: 1000 }, (_, i) => `card_${i + 1}`);
    expect(removes.map((f) => f.target)).toEqual(ids);
    expect(appends.map((f) => /id="(card_\d+)"/.exec(f.html)![1])).toEqual(ids);
  });

  it("runs the class's hooks too, with the change context", async () => {
    const { turbo, db, sqlite } = await openApp();
    db.insert(cards).values({ id: 1, boardId: 1, title: "a" }).run();
    db.update(cards).set({ title: "b" }).where(eq(cards.id, 1)).run();
    db.delete(cards).where(eq(cards.id, 1)).run();
    await turbo.feed.drain();
    const seqs = sqlite.prepare("SELECT seq FROM _turbocast_changes ORDER BY seq").pluck().all() as number[];
    expect(cardHooks.saves.map((s) => s.context)).toEqual([
      {
        created: true,
        previous: undefined,
        changed: ["id", "boardId", "title", "archived", "at"],
        version: seqs[0],
        actor: undefined,
      },
      {
        created: false,
        previous: { id: 1, boardId: 1, title: "a", archived: false, at: null },
        changed: ["title"],
        version: seqs[1],
        actor: undefined,
      },
    ]);
    expect(cardHooks.deletes.map((d) => d.context)).toEqual([{ version: seqs[2], actor: undefined }]);
  });

  it("logs a broadcastsTo that throws or returns something other than a stream as a failed hook, and goes on", async () => {
    const { turbo, db, log } = await openApp();
    cardHooks.mapping = (card) => {
      if (card.title === "throws") throw new Error("mapping exploded");
      if (card.title === "object") return { not: "a stream" };
      return BoardStream.for(card.boardId);
    };
    const frames = await captureBroadcasts(turbo, () => {
      db.insert(cards).values({ id: 1, boardId: 1, title: "throws" }).run();
      db.insert(cards).values({ id: 2, boardId: 1, title: "object" }).run();
      db.insert(cards).values({ id: 3, boardId: 1, title: "fine" }).run();
    });
    expect(frames.map(short)).toEqual([`${board(1)} append cards`]);
    const failures = log.filter((e) => e.details?.code === "TURBOCAST_HOOK_FAILED");
    expect(failures.map((e) => [e.details!.table, e.details!.key, e.details!.version])).toEqual([
      ["cards", 1, 1],
      ["cards", 2, 2],
    ]);
    expect(failures[0]!.message).toContain("CardStream.broadcastsTo");
    expect(failures[0]!.message).toContain("mapping exploded");
    // one line per kind of failure: the second (a different error) has its own
    expect(String(failures[1]!.message)).toContain("returned an object");
    // the hooks still ran for all three
    expect(cardHooks.saves.map((s) => s.card.id)).toEqual([1, 2, 3]);
  });

  it("awaits a mapping that returns a promise: the same frames, each change's before the next's, hooks after them", async () => {
    const { turbo, db, sqlite } = await openApp();
    const order: string[] = [];
    // an app on PostgreSQL looks the streams up asynchronously; the first card's lookup is the slowest
    cardHooks.mapping = async (card) => {
      await new Promise((resolve) => setTimeout(resolve, card.id === 1 ? 30 : 0));
      order.push(`mapped ${card.id}`);
      return card.archived ? [] : BoardStream.for(card.boardId);
    };
    cardHooks.onSave = (card) => order.push(`onSave ${card.id}`);
    const created = await captureBroadcasts(turbo, () => {
      db.insert(cards).values({ id: 1, boardId: 1, title: "slow" }).run();
      db.insert(cards).values({ id: 2, boardId: 2, title: "fast" }).run();
    });
    expect(created.map(short)).toEqual([`${board(1)} append cards`, `${board(2)} append cards`]);
    expect(created[0]!.html).toContain('id="card_1"');
    expect(order).toEqual(["mapped 1", "onSave 1", "mapped 2", "onSave 2"]);

    const moved = await captureBroadcasts(turbo, () => {
      db.update(cards).set({ boardId: 2 }).where(eq(cards.id, 1)).run();
      db.update(cards).set({ title: "renamed" }).where(eq(cards.id, 2)).run();
      db.update(cards).set({ archived: true }).where(eq(cards.id, 2)).run();
    });
    expect(moved.map(short)).toEqual([
      `${board(1)} remove card_1`,
      `${board(2)} append cards`,
      `${board(2)} replace card_2`,
      `${board(2)} remove card_2`,
    ]);
    const deleted = await captureBroadcasts(turbo, () => sqlite.exec("DELETE FROM cards"));
    expect(deleted.map(short)).toEqual([`${board(2)} remove card_1`]);
    expect(cardHooks.deletes.map((d) => d.card.id)).toEqual([1, 2]);
  });

  it("renders the partial with the class's locals, sync or a promise, and does not ask for them on a delete", async () => {
    const { turbo, db } = await openApp();
    const asked: number[] = [];
    cardHooks.locals = (card) => {
      asked.push(card.id);
      return card.id === 1 ? { extra: " (sync)" } : Promise.resolve({ extra: " (async)", card: "not the row" });
    };
    const frames = await captureBroadcasts(turbo, () => {
      db.insert(cards).values({ id: 1, boardId: 1, title: "a" }).run();
      db.insert(cards).values({ id: 2, boardId: 1, title: "b" }).run();
      db.update(cards).set({ title: "c" }).where(eq(cards.id, 2)).run();
    });
    // the row wins over a local of the same name
    expect(frames.map((f) => f.html)).toEqual([
      '<li id="card_1">a (sync)</li>',
      '<li id="card_2">b (async)</li>',
      '<li id="card_2">c (async)</li>',
    ]);
    await captureBroadcasts(turbo, () => db.delete(cards).run());
    expect(asked).toEqual([1, 2, 2]);
  });

  it("logs a mapping's rejected promise as a failed hook with table, key and version, and goes on", async () => {
    const { turbo, db, log, sqlite } = await openApp();
    cardHooks.mapping = async (card) => {
      if (card.title === "rejects") throw new Error("lookup failed");
      if (card.title === "object") return { not: "a stream" };
      return BoardStream.for(card.boardId);
    };
    const frames = await captureBroadcasts(turbo, () => {
      db.insert(cards).values({ id: 1, boardId: 1, title: "rejects" }).run();
      db.insert(cards).values({ id: 2, boardId: 1, title: "object" }).run();
      db.insert(cards).values({ id: 3, boardId: 1, title: "fine" }).run();
    });
    expect(frames.map(short)).toEqual([`${board(1)} append cards`]);
    const seqs = sqlite.prepare("SELECT seq FROM _turbocast_changes ORDER BY seq").pluck().all() as number[];
    const failures = log.filter((e) => e.details?.code === "TURBOCAST_HOOK_FAILED");
    expect(failures.map((e) => [e.details!.table, e.details!.key, e.details!.version])).toEqual([
      ["cards", 1, seqs[0]],
      ["cards", 2, seqs[1]],
    ]);
    expect(failures[0]!.message).toContain("CardStream.broadcastsTo");
    expect(failures[0]!.message).toContain("lookup failed");
    expect(String(failures[1]!.message)).toContain("returned an object");
    expect(cardHooks.saves.map((s) => s.card.id)).toEqual([1, 2, 3]);
  });

  it("logs a mapping that never settles as the mapping's failure after hookTimeoutMs, and goes on", async () => {
    const { turbo, db, log } = await openApp({ capture: { hookTimeoutMs: 50 } });
    cardHooks.mapping = (card) => (card.title === "hangs" ? new Promise(() => {}) : BoardStream.for(card.boardId));
    const frames = await captureBroadcasts(turbo, () => {
      db.insert(cards).values({ id: 1, boardId: 1, title: "hangs" }).run();
      db.insert(cards).values({ id: 2, boardId: 1, title: "fine" }).run();
    });
    expect(frames.map(short)).toEqual([`${board(1)} append cards`]);
    const failures = log.filter((e) => e.details?.code === "TURBOCAST_HOOK_FAILED");
    expect(failures.map((e) => [e.details!.table, e.details!.key])).toEqual([["cards", 1]]);
    expect(failures[0]!.message).toContain("CardStream.broadcastsTo");
    expect(failures[0]!.message).toContain("hookTimeoutMs");
  });

  it("broadcastsRefreshesTo may return a promise too", async () => {
    const { turbo, db } = await openApp();
    NoteStream.mapping = async (note) => BoardStream.for(note.boardId);
    try {
      const moved = await captureBroadcasts(turbo, () => {
        db.insert(notes).values({ id: 1, boardId: 1, body: "a" }).run();
        db.update(notes).set({ boardId: 2 }).where(eq(notes.id, 1)).run();
      });
      expect(moved.map(short).sort()).toEqual([`${board(1)} refresh undefined`, `${board(2)} refresh undefined`]);
    } finally {
      NoteStream.mapping = undefined;
    }
  });

  it("follows the class's partial, target, insertsBy, and several streams per row; composite keys in element ids", async () => {
    const { turbo, db } = await openApp();
    const frames = await captureBroadcasts(turbo, () =>
      db.insert(labels).values({ boardId: 1, name: "a_b c/é" }).run(),
    );
    const id = "label_1_a.5fb.20c.2f.c3.a9";
    expect(frames.map(short)).toEqual([
      `${board(1)} prepend board-labels`,
      `${ArchiveStream.for().name} prepend board-labels`,
    ]);
    expect(frames[0]!.html).toBe(`<span id="${id}">a_b c/é</span>`);
    const removed = await captureBroadcasts(turbo, () => db.delete(labels).run());
    expect(removed.map(short)).toEqual([`${board(1)} remove ${id}`, `${ArchiveStream.for().name} remove ${id}`]);
  });

  it("broadcastsRefreshesTo sends one debounced refresh per stream, to the old and the new one", async () => {
    const { turbo, db } = await openApp();
    const created = await captureBroadcasts(turbo, () => {
      db.insert(notes).values({ id: 1, boardId: 1, body: "a" }).run();
      db.insert(notes).values({ id: 2, boardId: 1, body: "b" }).run();
    });
    expect(created.map(short)).toEqual([`${board(1)} refresh undefined`]);
    const moved = await captureBroadcasts(turbo, () =>
      db.update(notes).set({ boardId: 2 }).where(eq(notes.id, 1)).run(),
    );
    expect(moved.map(short).sort()).toEqual([`${board(1)} refresh undefined`, `${board(2)} refresh undefined`]);
  });
});

describe("previous and changed", () => {
  it("are the same for an update through Drizzle, raw SQL and the sqlite3 shell", async () => {
    const { turbo, db, sqlite, file } = await openApp();
    const at = new Date(1_700_000_000_000);
    db.insert(cards).values({ id: 1, boardId: 1, title: "start", at }).run();
    await turbo.feed.drain();
    const expectLast = (previous: object, changed: string[]) => {
      const last = cardHooks.saves.at(-1)!;
      expect(last.context.created).toBe(false);
      expect(last.context.previous).toEqual(previous);
      expect(last.context.changed).toEqual(changed);
      // decoded like the entity: a Date, a boolean
      expect(last.context.previous!.at).toBeInstanceOf(Date);
      expect(typeof last.context.previous!.archived).toBe("boolean");
    };

    db.update(cards).set({ title: "drizzle" }).where(eq(cards.id, 1)).run();
    await turbo.feed.drain();
    expectLast({ id: 1, boardId: 1, title: "start", archived: false, at }, ["title"]);

    sqlite.prepare("UPDATE cards SET title = 'raw', archived = 1 WHERE id = 1").run();
    await turbo.feed.drain();
    expectLast({ id: 1, boardId: 1, title: "drizzle", archived: false, at }, ["title", "archived"]);

    const shell = spawnSync("sqlite3", [file, "UPDATE cards SET at = at + 1000, board_id = 5 WHERE id = 1;"], {
      encoding: "utf8",
    });
    if (shell.status !== 0 && process.env.CI) throw new Error(`sqlite3 shell: ${shell.stderr}`);
    if (shell.status === 0) {
      await turbo.feed.drain();
      // the shell's write reaches the poll, not notify()
      const { waitFor } = await import("./helpers.js");
      await waitFor(() => cardHooks.saves.length === 4);
      expectLast({ id: 1, boardId: 1, title: "raw", archived: true, at }, ["boardId", "at"]);
      expect(cardHooks.saves.at(-1)!.card.at).toEqual(new Date(at.getTime() + 1000));
      // no request wrote it
      expect(cardHooks.saves.at(-1)!.context.actor).toBeUndefined();
    }
  });

  it("are own enumerable getters of an update's context, the same functions for every update", async () => {
    const { turbo, db } = await openApp();
    db.insert(cards).values({ id: 1, boardId: 1, title: "start" }).run();
    db.update(cards).set({ title: "one" }).where(eq(cards.id, 1)).run();
    db.update(cards).set({ title: "two" }).where(eq(cards.id, 1)).run();
    await turbo.feed.drain();
    const [, first, second] = cardHooks.saves.map((s) => s.context);
    expect(Object.keys(first!)).toEqual(["created", "previous", "changed", "version", "actor"]);
    const previous = Object.getOwnPropertyDescriptor(first, "previous")!;
    const changed = Object.getOwnPropertyDescriptor(first, "changed")!;
    expect(previous).toMatchObject({ enumerable: true, configurable: true });
    expect(typeof previous.get).toBe("function");
    // getters made per change (an object literal's) cost every update a promotion of its whole change (see UpdateContext)
    expect(Object.getOwnPropertyDescriptor(second, "previous")!.get).toBe(previous.get);
    expect(Object.getOwnPropertyDescriptor(second, "changed")!.get).toBe(changed.get);
    expect({ ...second }).toEqual({
      created: false,
      previous: { id: 1, boardId: 1, title: "one", archived: false, at: null },
      changed: ["title"],
      version: 3,
      actor: undefined,
    });
  });

  it("keeps the previous row in the change log next to the new one, and adds the column to an older log", async () => {
    const file = path.join(tmp.dir, "old.db");
    const old = new Database(file);
    old.exec(DDL);
    // a change log as versions before previous rows created it
    old.exec(
      "CREATE TABLE _turbocast_changes (seq INTEGER PRIMARY KEY, tbl TEXT NOT NULL, op TEXT NOT NULL, row_json TEXT NOT NULL, at INTEGER NOT NULL)",
    );
    old.exec(
      `INSERT INTO _turbocast_changes (tbl, op, row_json, at) VALUES ('cards', 'update', '{"id":9,"board_id":1,"title":"legacy","archived":0,"at":null}', 0)`,
    );
    old.close();
    const sqlite = new Database(file);
    const db = drizzle(sqlite, { schema });
    const env = new nunjucks.Environment(new nunjucks.FileSystemLoader(writeTemplates(tmp.dir, TEMPLATES)), {
      autoescape: true,
    });
    const turbo = await createTurbo({
      db,
      views: env,
      streams: declarativeStreams,
      logger: memoryLogger(),
      secret: "declarative-test-secret-0123456789abcdef",
    });
    app = { sqlite, db, turbo, log: [], file };
    // the legacy update has no previous row: replaced where it is now, every key "changed"
    const legacy = await captureBroadcasts(turbo, () => {});
    expect(legacy.map(short)).toEqual([`${board(1)} replace card_9`]);
    expect(cardHooks.saves[0]!.context.previous).toBeUndefined();
    expect(cardHooks.saves[0]!.context.changed).toEqual(["id", "boardId", "title", "archived", "at"]);
    db.insert(cards).values({ id: 10, boardId: 1, title: "x" }).run();
    db.update(cards).set({ title: "y" }).where(eq(cards.id, 10)).run();
    const rows = sqlite
      .prepare("SELECT op, row_json, prev_json FROM _turbocast_changes WHERE seq > 1 ORDER BY seq")
      .all();
    expect(rows).toEqual([
      { op: "insert", row_json: expect.stringContaining('"title":"x"'), prev_json: null },
      {
        op: "update",
        row_json: expect.stringContaining('"title":"y"'),
        prev_json: expect.stringContaining('"title":"x"'),
      },
    ]);
  });
});

describe("start-up errors", () => {
  it("a missing partial names the class and the path", async () => {
    const error = await openApp({}, { "labels/label.njk": "x" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BroadcastConfigError);
    expect((error as BroadcastConfigError).code).toBe("TURBOCAST_BROADCAST_CONFIG");
    expect((error as Error).message).toContain("CardStream");
    expect((error as Error).message).toContain('"cards/_card.njk"');
    app = undefined;
  });

  it("broadcastsTo together with broadcastsRefreshesTo", async () => {
    class BothStream extends ModelStream<typeof boards> {
      static override model = boards;
      static override broadcastsTo = () => [];
      static override broadcastsRefreshesTo = () => [];
    }
    const sqlite = new Database(path.join(tmp.dir, "both.db"));
    sqlite.exec(DDL);
    const error = await createTurbo({
      db: drizzle(sqlite),
      views: new nunjucks.Environment(null, { autoescape: true }),
      streams: [BothStream],
      logger: memoryLogger(),
      secret: "declarative-test-secret-0123456789abcdef",
    }).catch((e: unknown) => e);
    sqlite.close();
    expect(error).toBeInstanceOf(BroadcastConfigError);
    expect((error as Error).message).toMatch(/BothStream: .*broadcastsTo.*broadcastsRefreshesTo.*not both/);
    // nothing installed by the failed start
    const check = new Database(path.join(tmp.dir, "both.db"));
    expect(check.prepare("SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'").pluck().get()).toBe(0);
    check.close();
  });
});

it("an insertsBy other than append or prepend is a start-up error", async () => {
  class SidewaysStream extends ModelStream<typeof boards> {
    static override model = boards;
    static override broadcastsTo = () => [];
    static override insertsBy = "sideways";
  }
  const sqlite = new Database(path.join(tmp.dir, "sideways.db"));
  sqlite.exec(DDL);
  const error = await createTurbo({
    db: drizzle(sqlite),
    views: new nunjucks.Environment(null, { autoescape: true }),
    streams: [SidewaysStream],
    logger: memoryLogger(),
    secret: "declarative-test-secret-0123456789abcdef",
  }).catch((e: unknown) => e);
  sqlite.close();
  expect(error).toMatchObject({ code: "TURBOCAST_BROADCAST_CONFIG", message: expect.stringContaining("sideways") });
});

describe("domId", () => {
  it("builds turbo-rails' ids from rows read through db, with a prefix, and as the dom_id global", async () => {
    const { db, turbo } = await openApp();
    db.insert(cards).values({ id: 12, boardId: 1, title: "x" }).run();
    const card = db.select().from(cards).where(eq(cards.id, 12)).get()!;
    expect(domId(card)).toBe("card_12");
    expect(domId(card, "edit")).toBe("edit_card_12");
    expect(domId(CardStream.for(12))).toBe("card_12");
    expect(turbo.views.renderString('{{ dom_id(card, "edit") }}', { card })).toBe("edit_card_12");
    expect(() => domId({ id: 12 })).toThrow(/domId/);
    expect(() => domId(CardStream.all())).toThrow(/table, not a row/);
  });

  it("singularises table names by one documented rule", () => {
    expect(["messages", "categories", "chat_messages", "glass", "sheep"].map(singularize)).toEqual([
      "message",
      "category",
      "chat_message",
      "glass",
      "sheep",
    ]);
  });
});

describe("this.db and the test helpers", () => {
  it("gives stream instances the db given to createTurbo", async () => {
    const { db } = await openApp();
    expect(BoardStream.for(1).db).toBe(db);
    expect(CardStream.all().db).toBe(db);
  });

  it("assertBroadcasts checks counts and shapes, assertNoBroadcasts none, both throw AssertionError", async () => {
    const { turbo, db } = await openApp();
    const frames = await assertBroadcasts(
      turbo,
      () => db.insert(cards).values({ id: 1, boardId: 1, title: "hello" }).run(),
      { stream: BoardStream.for(1), frames: [{ action: "append", target: "cards", html: /hello/ }] },
    );
    expect(frames).toHaveLength(1);
    await assertNoBroadcasts(turbo, () => db.insert(cards).values({ id: 2, boardId: 1, title: "x" }).run(), {
      stream: BoardStream.for(2),
    });
    await expect(
      assertBroadcasts(turbo, () => db.insert(cards).values({ id: 3, boardId: 1, title: "x" }).run(), { count: 2 }),
    ).rejects.toMatchObject({ name: "AssertionError", message: expect.stringContaining("expected 2 broadcast(s)") });
    await expect(
      assertNoBroadcasts(turbo, () => db.insert(cards).values({ id: 4, boardId: 1, title: "x" }).run()),
    ).rejects.toMatchObject({ name: "AssertionError" });
    await expect(
      assertBroadcasts(turbo, () => db.insert(cards).values({ id: 5, boardId: 1, title: "x" }).run(), {
        frames: [{ action: "prepend" }],
      }),
    ).rejects.toThrow(/action "append", expected "prepend"/);
  });

  it("suppressingBroadcasts: the writes inside reach no hook and no broadcast, and stay in the log", async () => {
    const { turbo, db, sqlite } = await openApp();
    await assertNoBroadcasts(turbo, () =>
      turbo.suppressingBroadcasts(async () => {
        db.insert(cards).values({ id: 1, boardId: 1, title: "quiet" }).run();
        await new Promise((resolve) => setImmediate(resolve));
        db.update(cards).set({ title: "still quiet" }).where(eq(cards.id, 1)).run();
      }),
    );
    expect(cardHooks.saves).toEqual([]);
    expect(sqlite.prepare("SELECT op FROM _turbocast_changes ORDER BY seq").pluck().all()).toEqual([
      "insert",
      "update",
    ]);
    // a sync fn returns its value; writes after it broadcast again
    expect(turbo.suppressingBroadcasts(() => 42)).toBe(42);
    await assertBroadcasts(turbo, () => db.update(cards).set({ title: "loud" }).where(eq(cards.id, 1)).run(), {
      count: 1,
    });
  });
});
