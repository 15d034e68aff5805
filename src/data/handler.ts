import { createHash } from "node:crypto";
import type { Request, RequestHandler } from "express";
import type { Published } from "../brokers/broker.js";
import type { Hub } from "../delivery/hub.js";
import { SyncError, TurbocastError } from "../errors.js";
import type { LogThrottle } from "../log-throttle.js";
import type { Stream } from "../streams/stream.js";
import { dataChannel } from "./channel.js";
import { versionOf } from "./events.js";
import type { SyncReader } from "./sync.js";

/** What `turbo.dataHandler` serves: one stream, a class (a ModelStream's table-wide stream, a plain Stream's one stream), or a stream per request. */
export type DataHandlerTarget = Stream | (abstract new (...args: never[]) => Stream) | ((req: Request) => Stream);

interface CachedSet {
  /** The response body, `{"version":…,"rows":[…]}`; null until read, and again once a change made it stale. */
  body: string | null;
  etag: string;
  version: number;
  /** Bumped by every invalidation: a read that began before one does not store its (stale) answer. */
  generation: number;
  reading: Promise<void> | null;
  unsubscribe: (() => void) | null;
  /** Settles once the set's data channel is subscribed (a scale-out broker registers its watch first): reads wait for it. */
  subscribed: Promise<void>;
}

export interface DataCacheInit {
  hub: Hub;
  reader: SyncReader;
  /** Most streams whose set is kept (least recently used dropped first). */
  maxEntries: number;
}

/**
 * The sets `turbo.dataHandler` serves, kept per process (django-binding's
 * cache). Each cached stream is subscribed, in this process's hub, to its
 * data channel: every data event of it — dispatched by whichever process's
 * feed claimed the change, and carried to every process by the broker —
 * marks the set stale, and the next GET reads it again. A gap (frames lost in
 * a broker outage) marks every set stale.
 */
export class DataCache {
  readonly #hub: Hub;
  readonly #reader: SyncReader;
  readonly #maxEntries: number;
  readonly #sets = new Map<string, CachedSet>();
  #state: "open" | "closed" = "open";

  constructor(init: DataCacheInit) {
    this.#hub = init.hub;
    this.#reader = init.reader;
    this.#maxEntries = init.maxEntries;
  }

  /** The current set of `stream`: from the cache, or read (once, however many requests ask at the same time). */
  async get(stream: Stream): Promise<{ body: string; etag: string }> {
    let set = this.#sets.get(stream.name);
    if (set) {
      // most recently used last
      this.#sets.delete(stream.name);
      this.#sets.set(stream.name, set);
    } else {
      const entry: CachedSet = {
        body: null,
        etag: "",
        version: 0,
        generation: 0,
        reading: null,
        unsubscribe: null,
        subscribed: Promise.resolve(),
      };
      set = entry;
      this.#sets.set(stream.name, entry);
      this.#evict();
      // subscribed before the first read: no change slips between
      entry.subscribed = this.#hub
        .subscribe([dataChannel(stream.name)], { send: (frame) => this.#changed(entry, frame) })
        .then(
          (unsubscribe) => {
            if (this.#sets.get(stream.name) === entry && this.#state === "open") entry.unsubscribe = unsubscribe;
            else unsubscribe();
          },
          () => {
            // not subscribed (the broker is unreachable): nothing would mark it stale, so it is read but not kept
            if (this.#sets.get(stream.name) === entry) this.#sets.delete(stream.name);
          },
        );
    }
    while (set.body === null) {
      set.reading ??= this.#read(stream, set);
      await set.reading;
    }
    return { body: set.body, etag: set.etag };
  }

  /** Number of sets kept. */
  get size(): number {
    return this.#sets.size;
  }

  close(): void {
    this.#state = "closed";
    for (const set of this.#sets.values()) set.unsubscribe?.();
    this.#sets.clear();
  }

  async #read(stream: Stream, set: CachedSet): Promise<void> {
    await set.subscribed;
    const generation = set.generation;
    try {
      const synced = await this.#reader.read(stream);
      if (set.generation !== generation) return;
      const body = `{"version":${synced.version},"rows":${JSON.stringify(synced.rows)}}`;
      set.version = synced.version;
      // a version that does not name the set alone (PostgreSQL, a write in flight at the read) is told apart by the body
      set.etag = synced.exact ? `"${synced.version}"` : `"${synced.version}-${digest(body)}"`;
      set.body = body;
    } finally {
      set.reading = null;
    }
  }

  #changed(set: CachedSet, frame: Published): void {
    const version = versionOf(frame.frame);
    // an event the cached read already covers changes nothing (the feed may dispatch a change after a GET read it)
    if (version !== null && set.body !== null && version <= set.version) return;
    set.generation++;
    set.body = null;
  }

  #evict(): void {
    while (this.#sets.size > this.#maxEntries) {
      const [name, oldest] = this.#sets.entries().next().value as [string, CachedSet];
      this.#sets.delete(name);
      oldest.unsubscribe?.();
    }
  }
}

export interface DataHandlerInit {
  cache: DataCache;
  resolve: (req: Request) => Stream;
  authenticate: (req: Request) => unknown;
  log: LogThrottle;
}

/**
 * Express middleware answering GET (and HEAD) with a stream's set as JSON,
 * `{ version, rows }`, and an ETag of its version; `If-None-Match` with it
 * gets 304. The request's user must pass the stream's `userPassesTest`
 * (403 otherwise). Other methods go on to the next handler.
 */
export function dataHandler(init: DataHandlerInit): RequestHandler {
  return (req, res, next) => {
    if (req.method !== "GET" && req.method !== "HEAD") {
      next();
      return;
    }
    void (async () => {
      let stream: Stream;
      try {
        stream = init.resolve(req);
      } catch (error) {
        if (error instanceof TurbocastError) {
          res.status(404).json({ error: "no such stream", code: error.code });
          return;
        }
        throw error;
      }
      const user = await init.authenticate(req);
      if ((await stream.userPassesTest(user ?? null)) !== true) {
        res.status(403).json({ error: "forbidden" });
        return;
      }
      const { body, etag } = await init.cache.get(stream);
      res.setHeader("ETag", etag);
      // the client must ask every time; the ETag makes asking cheap
      res.setHeader("Cache-Control", "no-cache");
      if (matches(req.headers["if-none-match"], etag)) {
        res.status(304).end();
        return;
      }
      res.type("application/json").send(body);
    })().catch((error: unknown) => {
      if (error instanceof SyncError) {
        if (error.status >= 500) init.log.log(`data ${error.stream}`, "error", error.message, { error });
        res.status(error.status).json({ error: error.message, code: error.code });
        return;
      }
      next(error);
    });
  };
}

function digest(body: string): string {
  return createHash("sha1").update(body).digest("base64url").slice(0, 16);
}

function matches(header: string | undefined, etag: string): boolean {
  if (header === undefined) return false;
  if (header.trim() === "*") return true;
  return header.split(",").some((tag) => {
    const value = tag.trim();
    return value === etag || value === `W/${etag}`;
  });
}
