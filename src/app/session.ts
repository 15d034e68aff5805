import { createHmac, timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";

/**
 * The demo's sign-in: a signed cookie holding the user id, no passwords.
 * It reads the raw Cookie header so the same function serves Express
 * routes and WebSocket upgrades (which never pass through Express).
 */
export const SESSION_COOKIE = "chat_session";

function sign(value: string, secret: string): string {
  return createHmac("sha256", secret).update(value).digest("base64url");
}

export function sessionCookie(userId: number, secret: string): string {
  const value = `${userId}.${sign(String(userId), secret)}`;
  return `${SESSION_COOKIE}=${value}; Path=/; HttpOnly; SameSite=Lax`;
}

export function clearedSessionCookie(): string {
  return `${SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0`;
}

/** The signed-in user's id, or null. */
export function sessionUserId(req: IncomingMessage, secret: string): number | null {
  const header = req.headers.cookie;
  if (!header) return null;
  for (const part of header.split(";")) {
    const [name, ...rest] = part.trim().split("=");
    if (name !== SESSION_COOKIE) continue;
    const [id, mac] = rest.join("=").split(".");
    if (!id || !mac || !/^\d+$/.test(id)) return null;
    const expected = Buffer.from(sign(id, secret));
    const given = Buffer.from(mac);
    return expected.length === given.length && timingSafeEqual(expected, given) ? Number(id) : null;
  }
  return null;
}
