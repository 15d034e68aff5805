import { relations } from "drizzle-orm";
import { boolean, integer, pgTable, primaryKey, serial, text, timestamp } from "drizzle-orm/pg-core";

/** The demo's tables on PostgreSQL (`DATABASE_URL`): the same columns and row shapes as schema.ts's SQLite ones. */
export const users = pgTable("users", {
  id: serial("id").primaryKey(),
  name: text("name").notNull().unique(),
});

export const rooms = pgTable("rooms", {
  id: serial("id").primaryKey(),
  name: text("name").notNull(),
  isPrivate: boolean("is_private").notNull().default(false),
  transport: text("transport", { enum: ["sse", "websocket"] })
    .notNull()
    .default("sse"),
  createdBy: integer("created_by").references(() => users.id),
  createdAt: timestamp("created_at", { withTimezone: true, precision: 3 })
    .notNull()
    .$defaultFn(() => new Date()),
});

export const memberships = pgTable(
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

export const messages = pgTable("messages", {
  id: serial("id").primaryKey(),
  roomId: integer("room_id")
    .notNull()
    .references(() => rooms.id, { onDelete: "cascade" }),
  userId: integer("user_id")
    .notNull()
    .references(() => users.id),
  body: text("body").notNull(),
  createdAt: timestamp("created_at", { withTimezone: true, precision: 3 })
    .notNull()
    .$defaultFn(() => new Date()),
  editedAt: timestamp("edited_at", { withTimezone: true, precision: 3 }),
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

export const MIGRATION = `
CREATE TABLE IF NOT EXISTS users (id serial PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS rooms (
  id serial PRIMARY KEY,
  name text NOT NULL,
  is_private boolean NOT NULL DEFAULT false,
  transport text NOT NULL DEFAULT 'sse',
  created_by integer REFERENCES users(id),
  created_at timestamptz(3) NOT NULL
);
CREATE TABLE IF NOT EXISTS memberships (
  room_id integer NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
  user_id integer NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  PRIMARY KEY (room_id, user_id)
);
CREATE TABLE IF NOT EXISTS messages (
  id serial PRIMARY KEY,
  room_id integer NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
  user_id integer NOT NULL REFERENCES users(id),
  body text NOT NULL,
  created_at timestamptz(3) NOT NULL,
  edited_at timestamptz(3)
);
CREATE INDEX IF NOT EXISTS messages_room ON messages(room_id, id);
`;
