import { randomBytes } from "node:crypto";
import { linkSync, readFileSync, unlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { ConfigError } from "../errors.js";

/** The shortest secret accepted: HMAC-SHA256 wants at least 256 bits of key. */
export const MIN_SECRET_LENGTH = 32;

export interface SecretOptions {
  secret?: string | undefined;
  secretFile?: string | undefined;
  /** Default `process.env.NODE_ENV`. */
  env?: string | undefined;
}

/**
 * The secret that signs stream names. Given: it is used (and must be long
 * enough). Not given in production: a ConfigError, because a generated
 * secret would differ between processes and break every open page on each
 * deploy. Not given elsewhere: read from `secretFile`, or generated into it
 * (mode 0600), so a development server restart keeps open pages subscribed.
 */
export function resolveSecret(options: SecretOptions): string {
  const env = options.env ?? process.env.NODE_ENV;
  if (options.secret !== undefined) {
    if (typeof options.secret !== "string" || options.secret.length < MIN_SECRET_LENGTH) {
      throw new ConfigError(
        `secret must be a string of at least ${MIN_SECRET_LENGTH} characters (e.g. openssl rand -hex 32)`,
      );
    }
    return options.secret;
  }
  if (env === "production") {
    throw new ConfigError(
      "secret is required when NODE_ENV=production: every process must sign stream names with the same secret " +
        "(createTurbo({ secret: process.env.TURBOCAST_SECRET }), e.g. from openssl rand -hex 32)",
    );
  }
  return readOrCreateSecretFile(path.resolve(options.secretFile ?? ".turbocast-secret"));
}

function readOrCreateSecretFile(file: string): string {
  const existing = readSecretFile(file);
  if (existing !== undefined) return existing;
  // Write a temporary file, then link it into place: link() fails if the
  // file exists, so two processes starting at once agree on one secret and
  // neither ever reads a half-written file.
  const temp = `${file}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
  try {
    writeFileSync(temp, `${randomBytes(32).toString("hex")}\n`, { mode: 0o600, flag: "wx" });
    try {
      linkSync(temp, file);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    }
  } catch (error) {
    throw new ConfigError(`could not create the development secret file ${file}; pass { secret } or { secretFile }`, {
      cause: error,
    });
  } finally {
    try {
      unlinkSync(temp);
    } catch {
      // never created
    }
  }
  const created = readSecretFile(file);
  if (created === undefined)
    throw new ConfigError(`the development secret file ${file} vanished while it was being created`);
  return created;
}

function readSecretFile(file: string): string | undefined {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new ConfigError(`could not read the secret file ${file}`, { cause: error });
  }
  const secret = text.trim();
  if (secret.length < MIN_SECRET_LENGTH) {
    throw new ConfigError(
      `the secret file ${file} holds fewer than ${MIN_SECRET_LENGTH} characters; delete it to generate a new one`,
    );
  }
  return secret;
}
