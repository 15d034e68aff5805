import { relations } from "drizzle-orm";
import { integer, primaryKey, sqliteTable, text } from "drizzle-orm/sqlite-core";

export const users = sqliteTable("users", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  name: text("name").notNull().unique(),
});

export const rooms = sqliteTable("rooms", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  name: text("name").notNull(),
  isPrivate: integer("is_private", { mode: "boolean" }).notNull().default(false),
  /** How this room's pages subscribe: the demo uses both transports. */
  transport: text("transport", { enum: ["sse", "websocket"] })
    .notNull()
    .default("sse"),
  createdBy: integer("created_by").references(() => users.id),
  createdAt: integer("created_at", { mode: "timestamp_ms" })
    .notNull()
    .$defaultFn(() => new Date()),
});

export const memberships = sqliteTable(
  "memberships",
  {
    roomId: integer("room_id")
      .notNull()
      .references(() => rooms.id, { onDelete: "cascade" }),
    userId: integer("user_id")
      .notNull()
      .references(() => users.id, { onDelete: "cascade" }),
  },
  (t) => [primaryKey({ columns: [t.roomId, t.userId] })],
);

export const messages = sqliteTable("messages", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  roomId: integer("room_id")
    .notNull()
    .references(() => rooms.id, { onDelete: "cascade" }),
  userId: integer("user_id")
    .notNull()
    .references(() => users.id),
  body: text("body").notNull(),
  createdAt: integer("created_at", { mode: "timestamp_ms" })
    .notNull()
    .$defaultFn(() => new Date()),
  editedAt: integer("edited_at", { mode: "timestamp_ms" }),
});

export const usersRelations = relations(users, ({ many }) => ({ messages: many(messages) }));
export const roomsRelations = relations(rooms, ({ many }) => ({
  messages: many(messages),
  memberships: many(memberships),
}));
export const membershipsRelations = relations(memberships, ({ one }) => ({
  room: one(rooms, { fields: [memberships.roomId], references: [rooms.id] }),
  user: one(users, { fields: [memberships.userId], references: [users.id] }),
}));
export const messagesRelations = relations(messages, ({ one }) => ({
  room: one(rooms, { fields: [messages.roomId], references: [rooms.id] }),
  author: one(users, { fields: [messages.userId], references: [users.id] }),
}));

export const schema = {
  users,
  rooms,
  memberships,
  messages,
  usersRelations,
  roomsRelations,
  membershipsRelations,
  messagesRelations,
};

export type User = typeof users.$inferSelect;
export type Room = typeof rooms.$inferSelect;
export type Message = typeof messages.$inferSelect;
