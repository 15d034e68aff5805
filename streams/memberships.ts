import { ModelStream, domId } from "turbocast";
import { memberships } from "../src/app/schema.js";
import { RoomStream, UserRoomsStream } from "./rooms.js";

type Membership = typeof memberships.$inferSelect;

/** Hooks, the escape hatch: joining or leaving a private room changes one user's list, not the room. */
export class MembershipStream extends ModelStream<typeof memberships> {
  static override model = memberships;

  override async onSave(membership: Membership, { created }: { created: boolean }) {
    if (!created) return;
    const room = await RoomStream.for(membership.roomId).load();
    if (room?.isPrivate) {
      await UserRoomsStream.for(membership.userId).append("rooms/_room.njk", { room }, { target: "rooms" });
    }
  }

  override async onDelete(membership: Membership) {
    await UserRoomsStream.for(membership.userId).remove({ target: domId(RoomStream.for(membership.roomId)) });
  }
}
