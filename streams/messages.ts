import { ModelStream } from "turbocast";
import { type Message, messages } from "../src/app/schema.js";
import { RoomStream } from "./rooms.js";

/**
 * No hooks: a message is in its room's list, and the defaults do the rest —
 * views/messages/_message.njk rendered with { message }, appended to
 * #messages, replaced at dom_id(message) when edited, removed when deleted.
 */
export class MessageStream extends ModelStream<typeof messages> {
  static override model = messages;
  static override broadcastsTo = (message: Message) => RoomStream.for(message.roomId);
}
