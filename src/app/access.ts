import { and, eq } from "drizzle-orm";
import type { ChatDatabase } from "./db.js";
import { type Room, memberships } from "./schema.js";

/** Public rooms are open to every signed-in user; private ones to their members. */
export async function canSeeRoom(db: ChatDatabase, userId: number | null, room: Room): Promise<boolean> {
  if (userId === null) return false;
  if (!room.isPrivate) return true;
  const [member] = await db
    .select({ userId: memberships.userId })
    .from(memberships)
    .where(and(eq(memberships.roomId, room.id), eq(memberships.userId, userId)));
  return member !== undefined;
}
