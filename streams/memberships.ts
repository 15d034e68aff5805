import { ModelStream } from "turbocast";
import { memberships } from "../src/app/schema.js";
import { RoomStream, UserRoomsStream } from "./rooms.js";

type Membership = typeof memberships.$inferSelect;

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
    await UserRoomsStream.for(membership.userId).remove({ target: `room_${membership.roomId}` });
  }
}
