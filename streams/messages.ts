import { eq } from "drizzle-orm";
import { ModelStream } from "turbocast";
import { appDb } from "../src/app/db.js";
import { type Message, messages, users } from "../src/app/schema.js";
import { RoomStream } from "./rooms.js";

export class MessageStream extends ModelStream<typeof messages> {
  static override model = messages;

  override async onSave(message: Message, { created }: { created: boolean }) {
    const author = appDb().select().from(users).where(eq(users.id, message.userId)).get();
    const room = RoomStream.for(message.roomId);
    if (created) await room.append("messages/_message.njk", { message, author }, { target: "messages" });
    else await room.replace("messages/_message.njk", { message, author }, { target: `message_${message.id}` });
  }

  override async onDelete(message: Message) {
    await RoomStream.for(message.roomId).remove({ target: `message_${message.id}` });
  }
}
