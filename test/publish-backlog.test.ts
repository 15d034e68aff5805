import Database from "better-sqlite3";
import { drizzle } from "drizzle-orm/better-sqlite3";
import { integer, sqliteTable, text } from "drizzle-orm/sqlite-core";
import nunjucks from "nunjucks";
import { afterEach, describe, expect, it } from "vitest";
import { type Broker, ModelStream, type Published, type Turbo, createTurbo } from "../src/index.js";
import { isDataChannel } from "../src/data/channel.js";
import { Publisher } from "../src/publish/publisher.js";
import { memoryLogger, tempDir, waitFor } from "./helpers.js";

const rows = sqliteTable("rows", { id: integer("id").primaryKey(), body: text("body").notNull() });

/** Broadcasts without awaiting, as a hook should (its frames reach the broker together). */
class RowStream extends ModelStream<typeof rows> {
  static override model = rows;
  override onSave(row: typeof rows.$inferSelect): void {
    void this.broadcastRaw(`<turbo-stream action="remove" target="row_${row.id}"></turbo-stream>`);
  }
}

/** A broker that holds every publish until told to accept them. */
class HeldBroker implements Broker {
  readonly kind = "held";
  held: Array<() => void> = [];
  published = 0;
  /** Publishes of HTML frames (each change also publishes data events on its streams' data channels). */
  frames = 0;
  #seq = 0;
  async start(): Promise<void> {}
  publish(stream: string, frame: string): Promise<Published> {
    this.published++;
    if (!isDataChannel(stream)) this.frames++;
    const seq = ++this.#seq;
    return new Promise((resolve) => this.held.push(() => resolve({ stream, frame, seq, position: `held.${seq}` })));
  }
  acceptAll(): void {
    for (const accept of this.held.splice(0)) accept();
  }
  async history(): Promise<Published[]> {
    return [];
  }
  async head(): Promise<string> {
    return `held.${this.#seq}`;
  }
  async control(): Promise<void> {}
  async close(): Promise<void> {
    this.acceptAll();
  }
}

/**
 * A held broker with a queue, as the scale-out brokers have: publishes nobody
 * awaits (data events) go in without a promise, and backlog() counts every
 * frame held.
 */
class QueueingBroker extends HeldBroker {
  unawaited = 0;
  #waiters: Array<{ limit: number; resolve: () => void }> = [];
  publishUnawaited(stream: string, frame: string): void {
    this.unawaited++;
    void this.publish(stream, frame);
  }
  backlog(limit: number): Promise<void> | undefined {
    if (this.held.length <= limit) return undefined;
    return new Promise((resolve) => this.#waiters.push({ limit, resolve }));
  }
  override acceptAll(): void {
    super.acceptAll();
    for (const waiter of this.#waiters.splice(0)) waiter.resolve();
  }
}

const turns = async (n: number): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
};

describe("publish backlog", () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  it("Publisher.backlog resolves once the publishes waiting for the broker fall to the limit", async () => {
    const broker = new HeldBroker();
    const publisher = new Publisher(broker, memoryLogger());
    expect(publisher.backlog(0)).toBeUndefined();
    const sent = [publisher.publish("a", "1"), publisher.publish("a", "2"), publisher.publish("a", "3")];
    expect(publisher.backlog(3)).toBeUndefined();
    let drained = false;
    const waiting = publisher.backlog(1)!.then(() => (drained = true));
    broker.held.shift()!();
    await sent[0];
    await turns(2);
    expect(drained).toBe(false);
    broker.acceptAll();
    await waiting;
    await Promise.all(sent);
  });

  it("Publisher.publishData hands data events to a broker's publishUnawaited (no promise) and logs its failures as a publish's", async () => {
    const broker = new QueueingBroker();
    const calls: string[] = [];
    let refuse: Error | null = null;
    broker.publishUnawaited = (stream: string, _frame: string, failed?: (error: unknown, stream: string) => void) => {
      calls.push(stream);
      if (refuse) failed!(refuse, stream);
    };
    const logger = memoryLogger();
    const publisher = new Publisher(broker, logger);
    publisher.publishData("data:a", "{}");
    expect(calls).toEqual(["data:a"]);
    expect(broker.published).toBe(0);
    refuse = new Error("unreachable");
    publisher.publishData("data:b", "{}");
    publisher.publishData("data:c", "{}");
    const warnings = logger.entries.filter((e) => e.level === "warn");
    expect(warnings).toHaveLength(1);
    expect(warnings[0]!.message).toMatch(/broadcast to data:b failed/);
    // without publishUnawaited, a data event is an ordinary publish
    const plain = new HeldBroker();
    new Publisher(plain, logger).publishData("data:d", "{}");
    expect(plain.published).toBe(1);
    plain.acceptAll();
  });

  it("stops claiming changes while 10,000 broadcasts wait for the broker, and goes on once they are accepted", async () => {
    const { dir, cleanup } = tempDir();
    cleanups.push(cleanup);
    const sqlite = new Database(`${dir}/app.db`);
    sqlite.pragma("journal_mode = WAL");
    sqlite.exec("create table rows (id integer primary key, body text not null)");
    cleanups.push(() => {
      sqlite.close();
    });
    const broker = new HeldBroker();
    const turbo: Turbo = await createTurbo({
      db: drizzle(sqlite),
      views: new nunjucks.Environment(null, { autoescape: true }),
      streams: [RowStream],
      broker,
      logger: memoryLogger(),
      secret: "test-secret-0123456789abcdef0123456789",
      secretFile: `${dir}/.turbocast-secret`,
    });
    cleanups.push(() => turbo.close());

    // 12,000 rows in one statement, written outside the app's db: the poll finds them
    sqlite.exec(
      "with recursive n(i) as (select 1 union all select i + 1 from n where i < 12000) insert into rows (id, body) select i, 'row ' || i from n",
    );
    // the feed claims 100 changes at a time (each publishes one frame and its data events); the claim
    // after the backlog passed 10,000 publishes does not happen
    await waitFor(() => broker.published >= 10_000, { timeoutMs: 20_000, message: "10,000 broadcasts waiting" });
    await turns(20);
    const stopped = broker.published;
    await turns(20);
    expect(broker.published).toBe(stopped);
    const perChange = stopped / broker.frames; // every claimed change's publishes are all out
    expect(stopped).toBeLessThan(10_000 + 100 * perChange);
    expect(broker.frames).toBeLessThan(12_000);
    broker.acceptAll();
    await waitFor(
      () => {
        broker.acceptAll();
        return broker.frames === 12_000;
      },
      { timeoutMs: 20_000, message: "every change broadcast" },
    );
    broker.acceptAll();
    await turbo.feed.drain();
    expect(broker.frames).toBe(12_000);
  });

  it("counts the frames a broker queues without promises (data events): stops claiming while its queue holds 10,000", async () => {
    const { dir, cleanup } = tempDir();
    cleanups.push(cleanup);
    const sqlite = new Database(`${dir}/app.db`);
    sqlite.pragma("journal_mode = WAL");
    sqlite.exec("create table rows (id integer primary key, body text not null)");
    cleanups.push(() => {
      sqlite.close();
    });
    const broker = new QueueingBroker();
    const turbo: Turbo = await createTurbo({
      db: drizzle(sqlite),
      views: new nunjucks.Environment(null, { autoescape: true }),
      streams: [RowStream],
      broker,
      logger: memoryLogger(),
      secret: "test-secret-0123456789abcdef0123456789",
      secretFile: `${dir}/.turbocast-secret`,
    });
    cleanups.push(() => turbo.close());
    sqlite.exec(
      "with recursive n(i) as (select 1 union all select i + 1 from n where i < 12000) insert into rows (id, body) select i, 'row ' || i from n",
    );
    await waitFor(() => broker.published >= 10_000, { timeoutMs: 20_000, message: "10,000 frames queued" });
    await turns(20);
    const stopped = broker.published;
    await turns(20);
    expect(broker.published).toBe(stopped);
    // the data events came without promises, and the queue's count stopped the feed all the same
    expect(broker.unawaited).toBe(stopped - broker.frames);
    expect(broker.unawaited).toBeGreaterThan(0);
    expect(broker.frames).toBeLessThan(12_000);
    await waitFor(
      () => {
        broker.acceptAll();
        return broker.frames === 12_000;
      },
      { timeoutMs: 20_000, message: "every change broadcast" },
    );
  });
});
