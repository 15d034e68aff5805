import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import Database from "better-sqlite3";
import { drizzle } from "drizzle-orm/better-sqlite3";
import nunjucks from "nunjucks";
import { resolveSecret } from "../../src/delivery/secret.js";
import { MAX_TOKEN_LENGTH, StreamSigner } from "../../src/delivery/stream-source.js";
import { BadSignatureError, ConfigError, createTurbo } from "../../src/index.js";
import { silentLogger } from "../../src/logger.js";
import { tempDir } from "../helpers.js";

const SECRET = "unit-test-secret-0123456789abcdef0123";

function rejects(signer: StreamSigner, token: string): string {
  try {
    signer.verify(token);
  } catch (error) {
    expect(error).toBeInstanceOf(BadSignatureError);
    return (error as BadSignatureError).code;
  }
  throw new Error(`accepted ${token}`);
}

describe("signed stream names", () => {
  it("round-trips a name, URL-safe", () => {
    const signer = new StreamSigner({ secret: SECRET });
    for (const name of ["row:rooms:1", "named:lobby", "all:rooms", "row:x%3Ay:%E2%9C%93", `named:${"n".repeat(500)}`]) {
      const token = signer.sign(name);
      expect(token).toMatch(/^[A-Za-z0-9_-]+\.\.[A-Za-z0-9_-]{43}$/);
      expect(token.length).toBeLessThanOrEqual(MAX_TOKEN_LENGTH);
      expect(signer.verify(token)).toBe(name);
    }
  });

  it("accepts only the canonical spelling of a MAC", () => {
    const signer = new StreamSigner({ secret: SECRET });
    const token = signer.sign("row:rooms:1");
    const last = token.at(-1)!;
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const index = alphabet.indexOf(last);
    // same 4 significant bits, different unused bits: decodes to the same bytes
    const sibling = alphabet[index ^ 1]!;
    expect(Buffer.from(token.slice(-43, -1) + sibling, "base64url")).toEqual(
      Buffer.from(token.slice(-43), "base64url"),
    );
    rejects(signer, token.slice(0, -1) + sibling);
  });

  it("rejects tampered, truncated, extended, spliced and foreign tokens with TURBOCAST_BAD_SIGNATURE", () => {
    const signer = new StreamSigner({ secret: SECRET });
    const token = signer.sign("row:rooms:1");
    const other = signer.sign("row:rooms:2");
    const [name, , mac] = token.split(".") as [string, string, string];
    const [otherName] = other.split(".") as [string];
    expect(rejects(signer, `${otherName}..${mac}`)).toBe("TURBOCAST_BAD_SIGNATURE");
    rejects(signer, token.slice(0, -1));
    rejects(signer, `${token}A`);
    rejects(signer, `${name}..${mac.slice(0, -1)}${mac.at(-1) === "A" ? "B" : "A"}`);
    rejects(signer, `${name}..${mac.slice(0, 20)}${mac[20] === "x" ? "y" : "x"}${mac.slice(21)}`);
    rejects(signer, `${name}.zz.${mac}`); // an expiry added afterwards
    rejects(signer, new StreamSigner({ secret: `${SECRET}x` }).sign("row:rooms:1"));
    rejects(signer, `${name}=..${mac}`);
    rejects(signer, "");
    rejects(signer, "x".repeat(MAX_TOKEN_LENGTH + 1));
    rejects(signer, `${name}.${mac}`);
  });

  it("expires tokens after signatureTtlMs, and an expiry cannot be stretched", () => {
    let now = 1_700_000_000_000;
    const signer = new StreamSigner({ secret: SECRET, ttlMs: 60_000, now: () => now });
    const token = signer.sign("named:lobby");
    expect(token).toMatch(/^[A-Za-z0-9_-]+\.[0-9a-z]+\.[A-Za-z0-9_-]{43}$/);
    now += 59_000;
    expect(signer.verify(token)).toBe("named:lobby");
    now += 2_000;
    rejects(signer, token);
    const [name, expiry, mac] = token.split(".") as [string, string, string];
    rejects(signer, `${name}.${(parseInt(expiry, 36) + 3600).toString(36)}.${mac}`);
    rejects(signer, `${name}..${mac}`);
  });
});

describe("the app secret", () => {
  it("is required in production", () => {
    expect(() => resolveSecret({ env: "production" })).toThrow(ConfigError);
    expect(() => resolveSecret({ env: "production" })).toThrow(/NODE_ENV=production/);
    expect(resolveSecret({ env: "production", secret: SECRET })).toBe(SECRET);
  });

  it("must be long enough", () => {
    expect(() => resolveSecret({ secret: "short" })).toThrow(/at least 32 characters/);
  });

  it("is generated once in development and kept in secretFile (mode 0600) across restarts", () => {
    const { dir, cleanup } = tempDir();
    try {
      const file = path.join(dir, "nested-name.secret");
      const first = resolveSecret({ env: "development", secretFile: file });
      expect(first).toMatch(/^[0-9a-f]{64}$/);
      expect(readFileSync(file, "utf8").trim()).toBe(first);
      expect(statSync(file).mode & 0o777).toBe(0o600);
      expect(resolveSecret({ env: "development", secretFile: file })).toBe(first);
      writeFileSync(file, "tiny");
      expect(() => resolveSecret({ env: "development", secretFile: file })).toThrow(/fewer than 32/);
    } finally {
      cleanup();
    }
  });

  it("createTurbo refuses to start in production without a secret, leaving nothing behind", async () => {
    const { cleanup } = tempDir();
    const previous = process.env.NODE_ENV;
    const sqlite = new Database(":memory:");
    try {
      process.env.NODE_ENV = "production";
      const options = {
        db: drizzle(sqlite),
        views: new nunjucks.Environment(null, { autoescape: true }),
        streams: [],
        logger: silentLogger,
      };
      await expect(createTurbo(options)).rejects.toMatchObject({ code: "TURBOCAST_CONFIG" });
      // the database was not instrumented: a second instance can take it
      const turbo = await createTurbo({ ...options, secret: SECRET });
      await turbo.close();
    } finally {
      process.env.NODE_ENV = previous;
      sqlite.close();
      cleanup();
    }
  });

  it("a development restart keeps open pages' signatures valid", async () => {
    const { dir, cleanup } = tempDir();
    const sqlite = new Database(":memory:");
    try {
      const secretFile = path.join(dir, ".turbocast-secret");
      const options = {
        db: drizzle(sqlite),
        views: new nunjucks.Environment(null, { autoescape: true }),
        streams: [],
        logger: silentLogger,
        secretFile,
      };
      const first = await createTurbo(options);
      const token = first.signStreamName("named:lobby");
      await first.close();
      expect(existsSync(secretFile)).toBe(true);
      const second = await createTurbo(options);
      expect(second.signStreamName("named:lobby")).toBe(token);
      await second.close();
    } finally {
      sqlite.close();
      cleanup();
    }
  });
});
