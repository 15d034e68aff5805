import { createHmac, timingSafeEqual } from "node:crypto";
import { BadSignatureError } from "../errors.js";
import { MAX_STREAM_NAME_LENGTH } from "../streams/names.js";

/**
 * Signed stream names: what a page carries in its `<turbo-stream-source src>`
 * so the server knows it rendered the tag. A token is
 *
 *   base64url(name) "." expiry "." base64url(HMAC-SHA256(key, expiry "\n" name))
 *
 * where `expiry` is empty (no expiry) or the expiry time in unix seconds
 * (base 36). The MAC covers the whole name and the expiry, so a signature for
 * one stream never opens another, and an expiry cannot be stretched. The key
 * is derived from the app secret for this one purpose, so the secret can be
 * shared with other uses (cookies) without a token of one being valid in the
 * other. Tokens use only `[A-Za-z0-9_.-]`: they go into URLs as they are.
 */
const KEY_PURPOSE = "turbocast/signed-stream-name/v1";
const MAC_LENGTH = 32;
const MAC_CHARS = 43; // base64url of 32 bytes, unpadded
const EXPIRY = /^[0-9a-z]{1,10}$/;

/** Longest token a valid name can produce: base64url(name) + 2 dots + expiry + MAC. */
export const MAX_TOKEN_LENGTH = Math.ceil((MAX_STREAM_NAME_LENGTH * 4) / 3) + 2 + 10 + MAC_CHARS;

export interface SignerOptions {
  /** The app secret (at least 32 characters). */
  secret: string;
  /** Tokens expire this many ms after signing; `undefined`: never. */
  ttlMs?: number | undefined;
  /** Clock, for tests. Default `Date.now`. */
  now?: () => number;
}

/** Signs and verifies stream names with one app secret. */
export class StreamSigner {
  #key: Buffer;
  #ttlMs: number | undefined;
  #now: () => number;

  constructor(options: SignerOptions) {
    this.#key = createHmac("sha256", options.secret).update(KEY_PURPOSE).digest();
    this.#ttlMs = options.ttlMs;
    this.#now = options.now ?? Date.now;
  }

  /** The signed token for a stream name. */
  sign(name: string): string {
    const expiry = this.#ttlMs === undefined ? "" : Math.ceil((this.#now() + this.#ttlMs) / 1000).toString(36);
    return `${Buffer.from(name, "utf8").toString("base64url")}.${expiry}.${this.#mac(expiry, name).toString("base64url")}`;
  }

  /**
   * The stream name a token was signed for. Throws BadSignatureError
   * (TURBOCAST_BAD_SIGNATURE) for anything else: malformed, truncated,
   * tampered, signed with another secret, or expired. The MAC is compared in
   * constant time, and only after the token's shape is checked — the shape
   * is public, so checking it first leaks nothing.
   */
  verify(token: string): string {
    if (typeof token !== "string" || token.length > MAX_TOKEN_LENGTH) throw new BadSignatureError("malformed token");
    const parts = token.split(".");
    if (parts.length !== 3) throw new BadSignatureError("malformed token");
    const [encodedName, expiry, encodedMac] = parts as [string, string, string];
    if (encodedName === "" || !/^[A-Za-z0-9_-]+$/.test(encodedName)) throw new BadSignatureError("malformed token");
    if (expiry !== "" && !EXPIRY.test(expiry)) throw new BadSignatureError("malformed expiry");
    if (encodedMac.length !== MAC_CHARS || !/^[A-Za-z0-9_-]+$/.test(encodedMac))
      throw new BadSignatureError("malformed signature");
    const name = Buffer.from(encodedName, "base64url").toString("utf8");
    // base64url decoding is lenient: insist the name re-encodes to exactly what was sent
    if (Buffer.from(name, "utf8").toString("base64url") !== encodedName) throw new BadSignatureError("malformed token");
    const given = Buffer.from(encodedMac, "base64url");
    // the last of 43 characters carries 2 unused bits: four spellings decode to one MAC; accept only the canonical one
    if (given.length !== MAC_LENGTH || given.toString("base64url") !== encodedMac)
      throw new BadSignatureError("malformed signature");
    const expected = this.#mac(expiry, name);
    if (!timingSafeEqual(given, expected)) throw new BadSignatureError("signature mismatch");
    if (expiry !== "" && parseInt(expiry, 36) * 1000 <= this.#now())
      throw new BadSignatureError("signature expired", { expired: true });
    return name;
  }

  #mac(expiry: string, name: string): Buffer {
    return createHmac("sha256", this.#key).update(`${expiry}\n${name}`, "utf8").digest();
  }
}
