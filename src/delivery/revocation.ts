import { randomBytes } from "node:crypto";
import type { Broker, ControlMessage } from "../brokers/broker.js";
import { ClosedError, InvalidSelectorError } from "../errors.js";
import { LogThrottle } from "../log-throttle.js";
import type { Logger } from "../logger.js";
import type { ConnectionSelector } from "./connection-registry.js";
import type { LiveAuthorization } from "./live-authorization.js";
import type { Streamable } from "./stream-source.js";

/** Which subscriptions `turbo.disconnect` / `turbo.reauthorize` are about. */
export interface AccessSelector {
  /** A user as `authenticate` returns it (its `userKey` is taken), or a user key (string or number). */
  user?: unknown;
  /** A row, a Stream, a ModelStream class (its table-wide stream), a stream name, or an array of these. */
  stream?: Streamable;
}

export interface RevocationInit {
  broker: Broker;
  /** This process's subscriptions. */
  access: LiveAuthorization;
  logger: Logger;
  /** The resolved `userKey` option. */
  userKey: (user: unknown) => string | undefined;
  /** The stream names of streamables, read as `turbo_stream_from` reads them. */
  namesOf: (streamables: readonly Streamable[]) => string[];
}

const CONTROL_FAILED = "control failed";

/**
 * `turbo.disconnect` and `turbo.reauthorize` across processes: each acts on
 * this process's subscriptions at once (LiveAuthorization), then goes to
 * the others as a control message on the broker's ordered path; messages
 * from other processes arrive in `onControl`. A broker that cannot carry
 * one is logged (once, then counted) and never thrown: this process acted.
 */
export class Revocations {
  readonly #init: RevocationInit;
  /** Names this instance in its messages: it acted on its own subscriptions before sending them. */
  readonly #id = randomBytes(9).toString("base64url");
  readonly #log: LogThrottle;
  #closed = false;

  constructor(init: RevocationInit) {
    this.#init = init;
    this.#log = new LogThrottle(init.logger);
  }

  /** Closes (refresh first) the subscriptions `options` names, here and in every process; resolves with how many here. */
  async disconnect(options: AccessSelector): Promise<number> {
    const selector = this.#selector(options, "disconnect");
    if (selector.userKey === undefined && selector.streams === undefined)
      throw new InvalidSelectorError("turbo.disconnect() needs a user, a stream or both");
    if (this.#closed) throw new ClosedError("turbocast instance");
    const closed = this.#init.access.disconnect(selector);
    await this.#send({ type: "disconnect", origin: this.#id, ...selector });
    return closed;
  }

  /** Re-checks the subscriptions `options` names (all without it), here and in every process; resolves with how many closed here. */
  async reauthorize(options?: AccessSelector): Promise<number> {
    const selector = this.#selector(options, "reauthorize");
    if (this.#closed) throw new ClosedError("turbocast instance");
    const [closed] = await Promise.all([
      this.#init.access.reauthorize(selector),
      this.#send({ type: "reauthorize", origin: this.#id, ...selector }),
    ]);
    return closed;
  }

  /**
   * A deleted row's subscriptions are closed in every process, this one
   * included, when the message arrives through the broker: after the frames
   * the delete's hook published, which went that way first. A broker that is
   * down leaves this process to do it alone.
   */
  closeDeleted(name: string): void {
    if (this.#closed) return;
    this.#init.broker.control({ type: "disconnect", origin: "", streams: [name] }).catch((error: unknown) => {
      this.#init.access.disconnect({ streams: [name] });
      this.#failed(`the subscriptions of deleted ${name} were closed in this process only`, error);
    });
  }

  /** A message from the broker (another process's, or this one's coming back: skipped). */
  onControl(message: ControlMessage): void {
    if (message.origin === this.#id || this.#closed) return;
    const selector = { userKey: message.userKey, streams: message.streams };
    if (message.type === "disconnect") this.#init.access.disconnect(selector);
    else void this.#init.access.reauthorize(selector);
  }

  /** From now on calls throw ClosedError and messages are ignored. */
  close(): void {
    this.#closed = true;
  }

  async #send(message: ControlMessage): Promise<void> {
    try {
      await this.#init.broker.control(message);
      this.#log.recovered(CONTROL_FAILED, "disconnects reach the other processes again");
    } catch (error) {
      this.#failed(
        `turbo.${message.type}() was applied in this process only (their periodic re-check still runs)`,
        error,
      );
    }
  }

  #failed(consequence: string, error: unknown): void {
    this.#log.log(
      CONTROL_FAILED,
      "warn",
      `could not reach the other processes through the ${this.#init.broker.kind} broker: ${consequence}`,
      { error },
    );
  }

  #selector(options: AccessSelector | undefined, method: string): ConnectionSelector {
    if (options !== undefined && (options === null || typeof options !== "object"))
      throw new InvalidSelectorError(`turbo.${method}() takes { user?, stream? }`);
    const { user, stream } = options ?? {};
    let userKey: string | undefined;
    if (user !== undefined) {
      userKey = typeof user === "string" || typeof user === "number" ? String(user) : this.#init.userKey(user);
      if (userKey === undefined)
        throw new InvalidSelectorError(
          `turbo.${method}(): the user has no key (userKey(user) gave none); pass the user authenticate returns, or its key`,
        );
    }
    const streams = stream === undefined ? undefined : this.#init.namesOf([stream]);
    return { userKey, streams };
  }
}
