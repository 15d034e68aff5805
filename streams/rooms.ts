import { ModelStream, Stream } from "turbocast";
import { canSeeRoom } from "../src/app/access.js";
import { appDb } from "../src/app/db.js";
import type { Room, User } from "../src/app/schema.js";
import { rooms } from "../src/app/schema.js";

/**
 * A room's page subscribes to its row stream (messages come and go there);
 * the room list subscribes to the table-wide stream, RoomStream.all().
 */
export class RoomStream extends ModelStream<typeof rooms> {
  static override model = rooms;

  override async userPassesTest(user: User | null) {
    if (!user) return false;
    if (this.isAll) return true; // the public room list
    const room = await this.load();
    return room !== undefined && canSeeRoom(appDb(), user.id, room);
  }

  override async onSave(room: Room, { created }: { created: boolean }) {
    // private rooms reach their members' own lists (see MembershipStream)
    if (room.isPrivate) return;
    if (created) await RoomStream.all().append("rooms/_room.njk", { room }, { target: "rooms" });
    else await RoomStream.all().replace("rooms/_room.njk", { room }, { target: `room_${room.id}` });
  }

  override async onDelete(room: Room) {
    await RoomStream.all().remove({ target: `room_${room.id}` });
  }
}

/** A user's own stream: private rooms they join appear in their room list. */
export class UserRoomsStream extends Stream {
  override userPassesTest(user: User | null) {
    return user !== null && String(user.id) === this.parts[0];
  }
}
