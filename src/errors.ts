/**
 * Every error turbocast throws is a `TurbocastError` with a stable `code`.
 * The README lists every code; tests match on `code`, never on message text.
 */
export class TurbocastError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A row (or bare key) has no primary key value: nothing is rendered or sent. */
export class MissingPrimaryKeyError extends TurbocastError {
  constructor(table: string, columns: string[], options?: { cause?: unknown }) {
    super(
      "TURBOCAST_MISSING_PRIMARY_KEY",
      `a row of table "${table}" has no value for its primary key (${columns.join(", ")}); ` +
        `a stream needs the row's key: save the row first or pass the key`,
      options,
    );
  }
}

/** A ModelStream names a table that has no primary key. */
export class NoPrimaryKeyTableError extends TurbocastError {
  constructor(table: string, streamClass: string) {
    super(
      "TURBOCAST_TABLE_WITHOUT_PRIMARY_KEY",
      `${streamClass} binds table "${table}", which has no primary key; turbocast names a row's stream by its key`,
    );
  }
}

/** Two ModelStream classes bind one table. */
export class DuplicateBindingError extends TurbocastError {
  constructor(table: string, first: string, second: string) {
    super(
      "TURBOCAST_DUPLICATE_BINDING",
      `table "${table}" is bound by both ${first} and ${second}; one ModelStream per table`,
    );
  }
}

/** Two stream classes claim the same stream name (prefix). */
export class DuplicateStreamNameError extends TurbocastError {
  constructor(name: string, first: string, second: string) {
    super("TURBOCAST_DUPLICATE_STREAM_NAME", `stream name "${name}" is claimed by both ${first} and ${second}`);
  }
}

/** A ModelStream class without `static model`, or a model that is not a Drizzle table. */
export class InvalidStreamClassError extends TurbocastError {
  constructor(message: string) {
    super("TURBOCAST_INVALID_STREAM_CLASS", message);
  }
}

/** A module in the streams folder failed to import. */
export class StreamModuleError extends TurbocastError {
  constructor(file: string, cause: unknown) {
    // plain Node cannot import TypeScript: say what to do about it
    const typescript =
      (cause as { code?: unknown } | null)?.code === "ERR_UNKNOWN_FILE_EXTENSION" && /\.[cm]?tsx?$/.test(file);
    super(
      "TURBOCAST_STREAM_MODULE_FAILED",
      `could not import stream module ${file}: ${cause instanceof Error ? cause.message : String(cause)}` +
        (typescript
          ? " (run the app with tsx, e.g. `npx tsx app.ts`, or compile the streams folder to JavaScript)"
          : ""),
      { cause },
    );
  }
}

/** A frame was asked for with bad options (target and targets, unknown action, bad method…). */
export class FrameOptionsError extends TurbocastError {
  constructor(message: string) {
    super("TURBOCAST_INVALID_FRAME", message);
  }
}

/** A template named in a broadcast failed to render. */
export class TemplateRenderError extends TurbocastError {
  constructor(template: string, cause: unknown) {
    super(
      "TURBOCAST_TEMPLATE_FAILED",
      `template "${template}" failed to render: ${cause instanceof Error ? cause.message : String(cause)}`,
      { cause },
    );
  }
}

/** A stream class is used before any createTurbo() bound it (or after close()). */
export class NotBoundError extends TurbocastError {
  constructor(streamClass: string) {
    super(
      "TURBOCAST_NOT_BOUND",
      `${streamClass} is not bound to a running turbocast instance: register it through createTurbo({ streams }) first`,
    );
  }
}

/** A stream name that no registered class serves. */
export class UnknownStreamError extends TurbocastError {
  constructor(name: string) {
    super("TURBOCAST_UNKNOWN_STREAM", `no registered stream serves "${name}"`);
  }
}

/** A signed stream name whose signature does not verify (tampered, truncated, foreign, expired). */
export class BadSignatureError extends TurbocastError {
  /** True when the signature is genuine but past its expiry (`signatureTtlMs`). */
  readonly expired: boolean;
  constructor(reason: string, options?: { expired?: boolean }) {
    super("TURBOCAST_BAD_SIGNATURE", `stream signature rejected: ${reason}`);
    this.expired = options?.expired === true;
  }
}

/** createTurbo was called with options it cannot run with. */
export class ConfigError extends TurbocastError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("TURBOCAST_CONFIG", message, options);
  }
}

/** A broker could not publish (its server is unreachable, or it is closed). */
export class BrokerError extends TurbocastError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("TURBOCAST_BROKER", message, options);
  }
}

/** The instance was closed; nothing more can be published through it. */
export class ClosedError extends TurbocastError {
  constructor(what: string) {
    super("TURBOCAST_CLOSED", `${what} is closed`);
  }
}

/** `turbo.disconnect` / `turbo.reauthorize` was given no selector, or a user without a key. */
export class InvalidSelectorError extends TurbocastError {
  constructor(message: string) {
    super("TURBOCAST_INVALID_SELECTOR", message);
  }
}

/** `turbo_stream_from` / `turbo.streamSource` was given nothing to subscribe to, or something that is not a streamable. */
export class InvalidStreamableError extends TurbocastError {
  constructor(message: string) {
    super("TURBOCAST_INVALID_STREAMABLE", message);
  }
}

/** Change capture could not be installed on a bound table: it is a view, SQLite refused its trigger, or its key column is missing. */
export class CaptureInstallError extends TurbocastError {
  readonly table: string;
  constructor(table: string, reason: string, options?: { cause?: unknown }) {
    super("TURBOCAST_CAPTURE_INSTALL_FAILED", `cannot capture changes of table "${table}": ${reason}`, options);
    this.table = table;
  }
}

/** The app's database could not be reached when turbocast started (PostgreSQL down, wrong address, refused login). */
export class DatabaseUnreachableError extends TurbocastError {
  constructor(target: string, cause: unknown) {
    super(
      "TURBOCAST_DATABASE_UNREACHABLE",
      `cannot connect to PostgreSQL at ${target}: ${cause instanceof Error ? cause.message : String(cause)}`,
      { cause },
    );
  }
}

/**
 * A subscription request was refused. `status` is the HTTP status answered
 * (400 malformed, 403 refused, 414 URL too long, 500 authenticate failed,
 * 503 closing); the client sees only the status, never the reason.
 */
export class SubscriptionRefusedError extends TurbocastError {
  readonly status: number;
  constructor(status: number, reason: string, options?: { cause?: unknown }) {
    super("TURBOCAST_SUBSCRIPTION_REFUSED", `subscription refused (${status}): ${reason}`, options);
    this.status = status;
  }
}

/**
 * A change could not be dispatched: its row did not decode, or its stream's
 * onSave / onDelete (or a template it rendered) threw. Logged, never thrown:
 * the change feed goes on with the next change.
 */
export class HookError extends TurbocastError {
  readonly table: string;
  readonly key: unknown;
  readonly seq: number;
  constructor(what: string, change: { table: string; key: unknown; seq: number }, cause: unknown) {
    super(
      "TURBOCAST_HOOK_FAILED",
      `${what} failed for table "${change.table}" key ${JSON.stringify(change.key)} (change ${change.seq}): ` +
        `${cause instanceof Error ? cause.message : String(cause)}`,
      { cause },
    );
    this.table = change.table;
    this.key = change.key;
    this.seq = change.seq;
  }

  /** The change's version (its position in the change log): the same as `seq`. */
  get version(): number {
    return this.seq;
  }
}

/**
 * A ModelStream's declarative broadcasts cannot work (checked by createTurbo
 * at start): its partial template does not exist, `broadcastsTo` and
 * `broadcastsRefreshesTo` are both set, or a static has the wrong type.
 */
export class BroadcastConfigError extends TurbocastError {
  readonly streamClass: string;
  constructor(streamClass: string, message: string, options?: { cause?: unknown }) {
    super("TURBOCAST_BROADCAST_CONFIG", `${streamClass}: ${message}`, options);
    this.streamClass = streamClass;
  }
}

/** `static fields` names a column the class's table does not have, or is neither a list nor "*". */
export class DataFieldsError extends TurbocastError {
  constructor(streamClass: string, message: string) {
    super("TURBOCAST_DATA_FIELDS", `${streamClass}.fields: ${message}`);
  }
}

/**
 * A data sync could not be answered: the stream has no `sync`, it returned
 * more rows than `maxSyncRows`, rows that are not rows of a bound table, or
 * writes kept landing while it ran. `status` is what HTTP and the shared
 * connection answer with.
 */
export class SyncError extends TurbocastError {
  readonly status: number;
  readonly stream: string;
  constructor(stream: string, status: number, message: string, options?: { cause?: unknown }) {
    super("TURBOCAST_SYNC", `sync of ${stream}: ${message}`, options);
    this.status = status;
    this.stream = stream;
  }
}
