import { relations } from "drizzle-orm";
import { integer, primaryKey, sqliteTable, text } from "drizzle-orm/sqlite-core";
import * as pgSchema from "./schema-pg.js";

/*
 * The demo runs on SQLite (CHAT_DB) or PostgreSQL (DATABASE_URL): the table
 * bindings below are the SQLite tables until useDialect("postgres") swaps in
 * the PostgreSQL twins of schema-pg.ts, before anything reads them (the app
 * calls it before it opens the database and before the streams folder is
 * imported). Both have the same columns and row shapes, so the app's code is
 * typed once, against the SQLite ones.
 */
const sqliteUsers = sqliteTable("users", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  name: text("name").notNull().unique(),
});

const sqliteRooms = sqliteTable("rooms", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  name: text("name").notNull(),
  isPrivate: integer("is_private", { mode: "boolean" }).notNull().default(false),
  /** How this room's pages subscribe: the demo uses both transports. */
  transport: text("transport", { enum: ["sse", "websocket"] })
    .notNull()
    .default("sse"),
  createdBy: integer("created_by").references(() => sqliteUsers.id),
  createdAt: integer("created_at", { mode: "timestamp_ms" })
    .notNull()
    .$defaultFn(() => new Date()),
});

const sqliteMemberships = sqliteTable(
  "memberships",
  {
    roomId: integer("room_id")
      .notNull()
      .references(() => sqliteRooms.id, { onDelete: "cascade" }),
    userId: integer("user_id")
      .notNull()
      .references(() => sqliteUsers.id, { onDelete: "cascade" }),
  },
  (t) => [primaryKey({ columns: [t.roomId, t.userId] })],
);

const sqliteMessages = sqliteTable("messages", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  roomId: integer("room_id")
    .notNull()
    .references(() => sqliteRooms.id, { onDelete: "cascade" }),
  userId: integer("user_id")
    .notNull()
    .references(() => sqliteUsers.id),
  body: text("body").notNull(),
  createdAt: integer("created_at", { mode: "timestamp_ms" })
    .notNull()
    .$defaultFn(() => new Date()),
  editedAt: integer("edited_at", { mode: "timestamp_ms" }),
});

function relationsOf(t: {
  users: typeof sqliteUsers;
  rooms: typeof sqliteRooms;
  memberships: typeof sqliteMemberships;
  messages: typeof sqliteMessages;
}) {
  return {
    usersRelations: relations(t.users, ({ many }) => ({ messages: many(t.messages) })),
    roomsRelations: relations(t.rooms, ({ many }) => ({
      messages: many(t.messages),
      memberships: many(t.memberships),
    })),
    membershipsRelations: relations(t.memberships, ({ one }) => ({
      room: one(t.rooms, { fields: [t.memberships.roomId], references: [t.rooms.id] }),
      user: one(t.users, { fields: [t.memberships.userId], references: [t.users.id] }),
    })),
    messagesRelations: relations(t.messages, ({ one }) => ({
      room: one(t.rooms, { fields: [t.messages.roomId], references: [t.rooms.id] }),
      author: one(t.users, { fields: [t.messages.userId], references: [t.users.id] }),
    })),
  };
}

const sqliteTables = {
  users: sqliteUsers,
  rooms: sqliteRooms,
  memberships: sqliteMemberships,
  messages: sqliteMessages,
};

export let users = sqliteUsers;
export let rooms = sqliteRooms;
export let memberships = sqliteMemberships;
export let messages = sqliteMessages;
export let schema = { ...sqliteTables, ...relationsOf(sqliteTables) };

/** Which database the demo runs on. */
export let dialect: "sqlite" | "postgres" = "sqlite";

/** Swaps the table bindings to one dialect's tables; call before opening the database. */
export function useDialect(which: "sqlite" | "postgres"): void {
  dialect = which;
  const tables =
    which === "postgres"
      ? ({
          users: pgSchema.users,
          rooms: pgSchema.rooms,
          memberships: pgSchema.memberships,
          messages: pgSchema.messages,
        } as unknown as typeof sqliteTables)
      : sqliteTables;
  users = tables.users;
  rooms = tables.rooms;
  memberships = tables.memberships;
  messages = tables.messages;
  schema =
    which === "postgres"
      ? (pgSchema.schema as unknown as typeof schema)
      : { ...sqliteTables, ...relationsOf(sqliteTables) };
}

export type User = typeof users.$inferSelect;
export type Room = typeof rooms.$inferSelect;
export type Message = typeof messages.$inferSelect;
