import { eq } from "drizzle-orm";
import { ModelStream, Stream } from "turbocast";
import { canSeeRoom } from "../src/app/access.js";
import type { Room, User } from "../src/app/schema.js";
import { memberships, messages, rooms } from "../src/app/schema.js";

/**
 * A room's page subscribes to its row stream (messages come and go there);
 * the room list subscribes to the table-wide stream, RoomStream.all(), and
 * to the user's own UserRoomsStream.
 *
 * A public room is in everyone's list; a private one only in its members'
 * lists. broadcastsTo says so, and the rest follows from it: a room made
 * private is removed from the public list and inserted into its members'
 * (it vanishes from everyone else's page), made public again the other way
 * round. Members who join later get it from MembershipStream.
 */
export class RoomStream extends ModelStream<typeof rooms> {
  static override model = rooms;
  // async: the members are a query, and on PostgreSQL every query is awaited
  static override broadcastsTo = async (room: Room) =>
    room.isPrivate ? (await membersOf(room.id)).map((userId) => UserRoomsStream.for(userId)) : RoomStream.all();
  /** A room's data subscribers (the live message count) sync to its messages; MessageStream lists no fields: key and version only. */
  static override sync = async (room: RoomStream) =>
    await room.db.select().from(messages).where(eq(messages.roomId, room.pk!));

  override async userPassesTest(user: User | null) {
    if (!user) return false;
    if (this.isAll) return true; // the public room list
    const room = await this.load();
    return room !== undefined && (await canSeeRoom(this.db, user.id, room));
  }
}

async function membersOf(roomId: number): Promise<number[]> {
  const members = await RoomStream.all()
    .db.select({ userId: memberships.userId })
    .from(memberships)
    .where(eq(memberships.roomId, roomId));
  return members.map((m) => m.userId);
}

/** A user's own stream: private rooms they belong to appear in their room list. */
export class UserRoomsStream extends Stream {
  override userPassesTest(user: User | null) {
    return user !== null && String(user.id) === this.parts[0];
  }
}
