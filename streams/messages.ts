import { eq } from "drizzle-orm";
import { ModelStream } from "turbocast";
import { type Message, messages, users } from "../src/app/schema.js";
import { RoomStream } from "./rooms.js";

/**
 * No hooks: a message is in its room's list, and the defaults do the rest —
 * views/messages/_message.njk rendered with { message, author }, appended to
 * #messages, replaced at dom_id(message) when edited, removed when deleted.
 */
export class MessageStream extends ModelStream<typeof messages> {
  static override model = messages;
  static override broadcastsTo = (message: Message) => RoomStream.for(message.roomId);
  // the partial shows the author's name: looked up with an awaited query, as on PostgreSQL every query is
  static override locals = async (message: Message) => ({ author: await authorOf(message) });
}

async function authorOf(message: Message) {
  const [author] = await MessageStream.all().db.select().from(users).where(eq(users.id, message.userId));
  return author;
}
