import type http from "node:http";
import type https from "node:https";
import path from "node:path";
import { and, eq } from "drizzle-orm";
import type { BetterSQLite3Database } from "drizzle-orm/better-sqlite3";
import type { NodePgDatabase } from "drizzle-orm/node-postgres";
import type nunjucks from "nunjucks";
import type { Broker, HistoryOptions, Published } from "./brokers/broker.js";
import { memoryBroker } from "./brokers/memory.js";
import type { CaptureAdapter } from "./changes/capture.js";
import { ChangeFeed } from "./changes/feed.js";
import type { CaptureOptions } from "./changes/options.js";
import { PgCapture } from "./changes/postgres/capture.js";
import type { RequestScopeAccess } from "./changes/request-notes.js";
import { SqliteCapture, sqliteClient } from "./changes/sqlite-capture.js";
import { type Instrumentation, instrumentDatabase } from "./db/instrument.js";
import { instrumentPgDatabase, isNodePgDatabase } from "./db/instrument-pg.js";
import { DeliveryEndpoint } from "./delivery/endpoint.js";
import { type AccessSelector, Revocations } from "./delivery/revocation.js";
import { localsOf } from "./delivery/page-middleware.js";
import { Hub } from "./delivery/hub.js";
import { type DeliveryOptions, resolveDeliveryOptions } from "./delivery/options.js";
import { exceptFrame } from "./delivery/hub.js";
import {
  ScopeTokens,
  currentRequestId,
  currentScope,
  outsideRequest,
  pageDigest,
  runInRequest,
} from "./delivery/request-context.js";
import { resolveSecret } from "./delivery/secret.js";
import {
  StreamSigner,
  StreamSourceRenderer,
  type StreamSourceOptions,
  type Streamable,
} from "./delivery/stream-source.js";
import { DataCache, type DataHandlerTarget, dataHandler } from "./data/handler.js";
import { checkDataFields } from "./data/fields.js";
import { type DataOptions, resolveDataOptions } from "./data/options.js";
import { SyncReader, type SyncedSet, postgresSyncSource, sqliteSyncSource } from "./data/sync.js";
import { logNames } from "./changes/postgres/log.js";
import { ConfigError } from "./errors.js";
import { LogThrottle } from "./log-throttle.js";
import { type Logger, consoleLogger } from "./logger.js";
import { Publisher } from "./publish/publisher.js";
import { RefreshDebouncer } from "./publish/refresh-debouncer.js";
import { checkDeclaredBroadcasts } from "./streams/declarative.js";
import { discoverStreams } from "./streams/discover.js";
import { domId } from "./streams/dom-id.js";
import { type AnyStreamClass, StreamRegistry, isModelStreamClass, isStreamClass } from "./streams/registry.js";
import { Stream } from "./streams/stream.js";
import { type StreamRuntime, bindStreamClass, unbindStreamClass } from "./streams/runtime.js";
import { type BoundTable, tableInfo } from "./streams/table.js";
import { TESTING, type TestingHooks } from "./testing-hooks.js";
import { type ViewsOption, resolveViews } from "./views/environment.js";
import { turboStreamFromGlobal } from "./views/turbo-stream-from.js";
import type { Request, RequestHandler, Response } from "express";

/**
 * Broadcasts waiting for the broker at which the change feed stops claiming
 * until they drain: several of a scale-out broker's batches (so batching is
 * never throttled), and a bound on the frames a bulk update can pile up in
 * memory when the broker is slower than the hooks.
 */
const PUBLISH_BACKLOG = 10_000;

/** A Drizzle database over better-sqlite3 or node-postgres (`drizzle(pool)`), with or without a schema. */
// biome-ignore lint/suspicious/noExplicitAny: any schema; Record<string, unknown> would reject the app's own schema type
export type TurboDatabase = BetterSQLite3Database<any> | NodePgDatabase<any>;

/** The safety poll on PostgreSQL, where NOTIFY wakes the feed at every commit (see CaptureOptions.pollIntervalMs). */
const POSTGRES_POLL_INTERVAL_MS = 1_000;

/**
 * Options of createTurbo. Every default is listed here; the delivery options
 * (secret, secretFile, signatureTtlMs, authenticate, path, transport,
 * allowedOrigins, heartbeatMs, retryMs, maxBufferedBytes,
 * maxStreamsPerSubscription, maxUrlLength) are documented on DeliveryOptions.
 */
export interface TurboOptions extends DeliveryOptions {
  /** The app's Drizzle database: better-sqlite3, or node-postgres (`drizzle(pool)`). Rows read through it carry `.stream`. */
  db: TurboDatabase;
  /**
   * The folder scanned for exported Stream / ModelStream classes (recursively;
   * `*.test.*` files and `_`-prefixed names are skipped), relative to the
   * current directory — or the classes themselves. Default: `"streams"`.
   */
  streams?: string | readonly AnyStreamClass[];
  /** A nunjucks Environment with autoescape on, or the templates folder. Required. */
  views: ViewsOption;
  /** Broker that carries frames to every process. Default: in-memory (one process). */
  broker?: Broker;
  /** Replay window of the default in-memory broker. Default: 1,000 frames and 5 minutes per stream. */
  history?: HistoryOptions;
  /** Refresh calls on one stream within this many ms become one frame. Default 500 (as turbo-rails). */
  refreshDebounceMs?: number;
  /** Where turbocast logs hook failures and broker outages. Default: console. */
  logger?: Logger;
  /**
   * Change capture: triggers on every bound table feed a change log that is
   * drained into `onSave` / `onDelete`. Defaults: `pollIntervalMs` 100,
   * `batchSize` 100, `leaseMs` 30,000, `hookTimeoutMs` 10,000,
   * `retain` `{ count: 10_000, ageMs: 3_600_000 }` (see CaptureOptions for each).
   */
  capture?: CaptureOptions;
  /** Data subscribers: `maxSyncRows` (default 10,000) and `cachedSets` (default 1,000); see DataOptions. */
  data?: DataOptions;
}

/** A running turbocast instance. */
export interface Turbo {
  readonly registry: StreamRegistry;
  readonly broker: Broker;
  readonly hub: Hub;
  readonly views: nunjucks.Environment;
  readonly logger: Logger;
  /** The subscription path (SSE and WebSocket), e.g. `/turbo-streams`. */
  readonly path: string;
  /** Where `middleware()` serves the optional client script that makes WebSocket sources reconnect: `<path>/client.js`. */
  readonly clientScriptPath: string;
  /** The change feed that calls the hooks (`state`, `drain()` to dispatch everything committed so far). */
  readonly feed: ChangeFeed;
  /** Publishes an already built frame to a stream name (what every broadcast method ends in). */
  publish(stream: string, frame: string): Promise<Published>;
  /**
   * Express middleware; mount it before the routes (and after the session
   * middleware `authenticate` relies on). It serves SSE subscriptions on
   * `path` and the client script on `path/client.js`, and, for every other
   * request, takes the broker position before the route reads data, records
   * X-Turbo-Request-Id, and leaves `res.locals.turbocast` for `turbo_stream_from`.
   */
  middleware(): RequestHandler;
  /**
   * Serves WebSocket subscriptions on `path` of the app's own server (no
   * second port). Throws ClosedError after close().
   *
   * @example
   * const server = http.createServer(app);
   * turbo.listen(server);
   * server.listen(3000);
   */
  listen(server: http.Server | https.Server): void;
  /**
   * The `<turbo-stream-source>` tag for `streamables`, as `turbo_stream_from`
   * renders it, for code that builds markup without nunjucks. Pass the
   * request or response of a request that went through `middleware()`.
   */
  streamSource(
    target: Request | Response | null,
    streamables: readonly Streamable[],
    options?: StreamSourceOptions,
  ): string;
  /** The signed token of a stream name, for clients other than `<turbo-stream-source>` (`?s=<token>`). */
  signStreamName(name: string): string;
  /**
   * Runs `fn` (sync or async) with broadcasts of its own writes suppressed:
   * changes it writes through the app's connection reach no hook and no
   * declarative broadcast (they stay in the change log). Writes made at the
   * same time by other requests, or by other processes, are dispatched as
   * usual. Returns what `fn` returns.
   *
   * @example
   * await turbo.suppressingBroadcasts(() => db.update(messages).set({ body: "" }).run());
   */
  suppressingBroadcasts<T>(fn: () => T): T;
  /**
   * Closes, in every process, the open subscriptions of `user` and/or that
   * hold `stream` (both given: those of that user holding that stream). Each
   * gets one `refresh` frame first, then SSE ends its response and WebSocket
   * closes with CloseCode.ACCESS_ENDED (4403); the page reloads into what the
   * server now shows it, and any new subscription goes through every check.
   * `user` is a user as `authenticate` returns it (its `userKey`) or the key
   * itself; `stream` a row, a Stream, a ModelStream class (its table-wide
   * stream, as in `turbo_stream_from`), a stream name, or an array of these.
   * Applied in this process at once; a frame published after the promise
   * resolved reaches none of them in any process (the message travels the
   * frames' ordered path through the broker). A broker outage is logged and
   * the disconnect still applies here. Resolves with how many subscriptions
   * this process closed; nothing matching is a no-op.
   *
   * @example
   * await db.delete(memberships).where(and(eq(memberships.roomId, room.id), eq(memberships.userId, bob.id)));
   * await turbo.disconnect({ user: bob, stream: room });
   */
  disconnect(options: AccessSelector): Promise<number>;
  /**
   * Re-runs `userPassesTest`, in every process, for the open subscriptions of
   * `user` and/or holding `stream` (all of them without either) and closes
   * those that fail, as `disconnect` does. A check that throws keeps its
   * subscription (logged). Resolves, once this process's checks are done,
   * with how many of its subscriptions were closed; other processes check
   * theirs when the message reaches them.
   */
  reauthorize(options?: AccessSelector): Promise<number>;
  /**
   * Express middleware that answers GET with a stream's set as JSON —
   * `{ version, rows }`, rows from the stream class's `sync` through each
   * row class's `static fields` — and an ETag of its version
   * (`If-None-Match` gets 304). The set is cached in this process and
   * marked stale by every data event of the stream, whichever process
   * dispatched the change. Takes a stream, a registered class (a
   * ModelStream's table-wide stream, a plain Stream's one stream) or
   * `(req) => stream`; the request's user must pass its `userPassesTest`.
   *
   * @example
   * app.get("/rooms/:id/messages.json", turbo.dataHandler((req) => RoomStream.for(Number(req.params.id))));
   */
  dataHandler(target: DataHandlerTarget): RequestHandler;
  /**
   * A stream's set as data subscribers get it: the rows its class's `sync`
   * returns, through each row class's `static fields`, and the change log's
   * position they were read at. Throws SyncError (TURBOCAST_SYNC).
   */
  sync(stream: Stream): Promise<SyncedSet>;
  /** Ends every subscription, stops the change feed, unbinds the stream classes. Safe to call twice. */
  close(): Promise<void>;
}

/**
 * Starts turbocast for an app: registers the stream classes, instruments the
 * Drizzle database, starts the broker and the hub, installs change capture
 * on every bound table (in one transaction) and starts the change feed.
 *
 * A createTurbo that throws leaves nothing running and no trigger installed
 * by it.
 *
 * @example
 * const turbo = await createTurbo({ db, views: env, streams: "streams" });
 */
export async function createTurbo(options: TurboOptions): Promise<Turbo> {
  if (!options || typeof options !== "object") throw new ConfigError("createTurbo needs an options object");
  const logger = options.logger ?? consoleLogger;
  const views = resolveViews(options.views);
  const db = options.db;
  if (!db) throw new ConfigError("db is required: the app's Drizzle better-sqlite3 or node-postgres database");
  const postgres = isNodePgDatabase(db);
  const refreshDebounceMs = options.refreshDebounceMs ?? 500;
  const delivery = resolveDeliveryOptions(options);
  const signer = new StreamSigner({
    secret: resolveSecret({ secret: options.secret, secretFile: options.secretFile }),
    ttlMs: delivery.signatureTtlMs,
  });

  const registry = new StreamRegistry();
  const streams = options.streams ?? "streams";
  const classes = typeof streams === "string" ? await discoverStreams(path.resolve(streams)) : [...streams];
  for (const cls of classes) registry.register(cls);
  // declarative broadcasts fail here, not at the first change: both forms on one class, a partial that is not there
  for (const cls of registry.modelClasses) checkDeclaredBroadcasts(cls, (name) => views.getTemplate(name));
  // a field list naming a column the table lacks fails here, not when the first event would carry it
  for (const cls of registry.modelClasses) checkDataFields(cls);
  const dataOptions = resolveDataOptions(options.data);

  const broker = options.broker ?? memoryBroker({ history: options.history });
  const hub = new Hub(broker);
  let closing: Promise<void> | undefined;
  const publisher = new Publisher(broker, logger);
  const { publish } = publisher;
  const refreshes = new RefreshDebouncer({ publish, debounceMs: refreshDebounceMs });

  const runtime: StreamRuntime = {
    render: (template, context) => views.render(template, context as object),
    publish(stream, frame, opts) {
      // the page that made the request (its client script said which) is skipped by the hub
      const page = opts?.toOthers === true ? currentScope()?.page : undefined;
      return publish(stream, page === undefined ? frame : exceptFrame(frame, pageDigest(page)));
    },
    publishData: publisher.publishData,
    db,
    // a refresh caused by a request names it, so the page that made it can ignore it
    refresh: (stream, spec) => refreshes.refresh(stream, spec.requestId ?? currentRequestId()),
    async loadRow(table, pk) {
      const info = tableInfo(table as BoundTable);
      const where = and(...info.keys.map((k) => eq(k.column, pk[k.key])));
      if (postgres) {
        const rows = await (db as NodePgDatabase)
          .select()
          .from(info.table as never)
          .where(where)
          .limit(1);
        return rows[0] as Record<string, unknown> | undefined;
      }
      return (db as BetterSQLite3Database)
        .select()
        .from(info.table as never)
        .where(where)
        .get() as Record<string, unknown> | undefined;
    },
  };

  /** The newest position seen: the cursor of tags rendered outside a request (by hooks). */
  let latestPosition: string | null = null;
  /** The scopes (requests, suppressingBroadcasts) that wrote changes, by the token the change log notes. */
  const scopes = new ScopeTokens();
  const requests: RequestScopeAccess = {
    current: () => scopes.current(),
    run: (token, fn) => scopes.run(token, fn),
    outside: outsideRequest,
    scope: (token) => scopes.scope(token),
  };
  /** Misconfiguration noticed while running: logged once, then counted. */
  const notices = new LogThrottle(logger, { intervalMs: Number.POSITIVE_INFINITY });
  /** Broker gaps come with outages: each kind at most once a minute, the rest counted. */
  const gaps = new LogThrottle(logger);
  const pgCapture = postgres
    ? new PgCapture({ client: (db as { $client?: unknown }).$client, logger, schema: options.capture?.schema })
    : undefined;
  const capture: CaptureAdapter = pgCapture ?? new SqliteCapture(sqliteClient(db as BetterSQLite3Database), requests);
  const feed = new ChangeFeed({
    capture,
    registry,
    logger,
    options: postgres ? { pollIntervalMs: POSTGRES_POLL_INTERVAL_MS, ...options.capture } : options.capture,
    onOtherFeed:
      broker.kind === "memory"
        ? () =>
            notices.log(
              "other feed",
              "warn",
              "another turbocast instance (another process, or another createTurbo in this one) dispatches this database's changes, but this one uses the in-memory broker: its broadcasts reach only its own subscribers. Use redisBroker() or postgresBroker() when several processes share the database",
            )
        : undefined,
    requests,
    backpressure: () => publisher.backlog(PUBLISH_BACKLOG),
    afterDelete: (stream) => revocations.closeDeleted(stream.name),
  });
  const renderer = new StreamSourceRenderer({
    registry,
    signer,
    path: delivery.path,
    transport: delivery.transport,
    maxStreams: delivery.maxStreamsPerSubscription,
    latestPosition: () => latestPosition,
  });
  const syncReader = new SyncReader({
    source: pgCapture
      ? postgresSyncSource(
          (db as unknown as { $client: Parameters<typeof postgresSyncSource>[0] }).$client,
          () => logNames(pgCapture.logSchema ?? "public").changes,
        )
      : sqliteSyncSource(sqliteClient(db as BetterSQLite3Database)),
    maxRows: dataOptions.maxSyncRows,
  });
  const endpoint = new DeliveryEndpoint({
    hub,
    broker,
    registry,
    signer,
    renderer,
    options: delivery,
    logger,
    position: () => latestPosition,
    syncReader,
  });
  const revocations = new Revocations({
    broker,
    access: endpoint.access,
    logger,
    userKey: delivery.userKey,
    namesOf: (streamables) => renderer.namesOf(streamables),
  });
  const streamFrom = turboStreamFromGlobal(
    views,
    (streamables, opts) => renderer.render(undefined, null, streamables, opts),
    () => {
      notices.log(
        "no middleware",
        "warn",
        "turbo_stream_from rendered in a request that did not pass through turbo.middleware(): mount app.use(turbo.middleware()) before your routes, or pages miss frames and SSE subscriptions get 404",
      );
    },
  );
  const dataCache = new DataCache({ hub, reader: syncReader, maxEntries: dataOptions.cachedSets });
  const removeGlobal = (): void => {
    const globals = (views as unknown as { globals?: Record<string, unknown> }).globals;
    if (globals?.turbo_stream_from === streamFrom) delete globals.turbo_stream_from;
    if (globals?.dom_id === domId) delete globals.dom_id;
  };

  let instrumentation: Instrumentation | undefined;
  let bound = false;
  try {
    instrumentation = postgres
      ? instrumentPgDatabase(db, {
          classFor: (table) => registry.forTable(table),
          onWrite: () => outsideRequest(() => feed.notify()),
          // the scope's token (its request id, page, actor, suppression), as the SQLite notes record it
          requestId: () => {
            const token = requests.current();
            return token === undefined ? undefined : pgCapture!.noteFor(token);
          },
        })
      : instrumentDatabase(db as BetterSQLite3Database, {
          classFor: (table) => registry.forTable(table),
          // drains run outside the writing request's scope: a hook dispatching
          // other requests' (or processes') changes must not carry its request id
          onWrite: () => outsideRequest(() => feed.notify()),
        });
    await broker.start(
      (frame) => {
        latestPosition = frame.position;
        hub.deliver(frame);
      },
      {
        control: (message) => revocations.onControl(message),
        gap: (reason) => {
          // one outage can report several gaps (subscription lost, publishes refused): count them
          gaps.log("gap", "warn", `frames may have been missed (${reason}); subscribers get a refresh`);
          void hub
            .refreshAll()
            .catch((error) => gaps.log("gap refresh failed", "error", "refresh after a gap failed", { error }));
        },
        log: (level, message, error) => logger[level](message, error === undefined ? undefined : { error }),
      },
    );
    latestPosition ??= await broker.head();
    for (const cls of registry.classes) bindStreamClass(cls, runtime);
    bound = true;
    // a template rendered by a hook may call turbo_stream_from
    views.addGlobal("turbo_stream_from", streamFrom);
    views.addGlobal("dom_id", domId);
    // last: from here on hooks may run, so everything they use is in place
    await feed.start();
  } catch (error) {
    await feed.close();
    await endpoint.close();
    removeGlobal();
    if (bound) for (const cls of registry.classes) unbindStreamClass(cls, runtime);
    instrumentation?.restore();
    await broker.close().catch(() => {});
    throw error;
  }

  const turbo: Turbo = {
    registry,
    broker,
    hub,
    views,
    logger,
    path: delivery.path,
    clientScriptPath: `${delivery.path}/client.js`,
    feed,
    publish,
    middleware: () => endpoint.middleware(),
    listen: (server) => endpoint.listen(server),
    streamSource(target, streamables, opts) {
      const locals = localsOf(target);
      if (locals) return locals.streamSource(streamables, opts);
      const req = target && !("locals" in target) ? (target as Request) : undefined;
      return renderer.render(req, null, streamables, opts);
    },
    signStreamName: (name) => signer.sign(name),
    sync: (stream) => syncReader.read(stream),
    dataHandler(target) {
      return dataHandler({
        cache: dataCache,
        resolve: dataTargetResolver(registry, target),
        authenticate: delivery.authenticate,
        log: notices,
      });
    },
    suppressingBroadcasts: (fn) =>
      runInRequest({ ...(currentScope() ?? { requestId: undefined }), suppressed: true }, fn),
    disconnect: (options) => revocations.disconnect(options),
    reauthorize: (options) => revocations.reauthorize(options),
    close() {
      closing ??= (async () => {
        // first: the change being dispatched may still publish to live subscribers
        await feed.close();
        revocations.close();
        publisher.close();
        await endpoint.close();
        dataCache.close();
        removeGlobal();
        for (const cls of registry.classes) unbindStreamClass(cls, runtime);
        refreshes.close();
        instrumentation?.restore();
        await broker.close();
      })();
      return closing;
    },
  };
  const testing: TestingHooks = { tap: (listener) => publisher.tap(listener), flushRefreshes: () => refreshes.flush() };
  Object.defineProperty(turbo, TESTING, { value: testing });
  return turbo;
}

/** How a dataHandler finds the stream of a request; a class that is not registered is refused at once. */
function dataTargetResolver(registry: StreamRegistry, target: DataHandlerTarget): (req: Request) => Stream {
  if (target instanceof Stream) return () => target;
  if (isModelStreamClass(target) || isStreamClass(target)) {
    if (!registry.classes.has(target)) {
      throw new ConfigError(`dataHandler(${target.name}): the class is not registered with this turbocast instance`);
    }
    const stream = isModelStreamClass(target) ? target.all() : (target as typeof Stream).for();
    return () => stream;
  }
  if (typeof target === "function") return target as (req: Request) => Stream;
  throw new ConfigError("dataHandler takes a stream, a registered stream class, or (req) => stream");
}
