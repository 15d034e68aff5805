import type { BetterSQLite3Database } from "drizzle-orm/better-sqlite3";
import { describe, expect, expectTypeOf, it } from "vitest";
import { type DeleteContext, ModelStream, type SaveContext, Stream } from "../src/index.js";
import { memberships, messages, rooms, type schema } from "./fixtures/schema.js";

// The typing choice for a row's stream: `XStream.for(row)` is the typed accessor. Drizzle's result
// types cannot carry `.stream`: which class binds a table is decided at run time (the streams folder),
// so `row.stream` exists at run time (templates, JavaScript) but not in TypeScript. tsc checks this file
// in `npm test`; the `it` blocks also run what can run without a database.

type Room = typeof rooms.$inferSelect;
type Message = typeof messages.$inferSelect;
type Membership = typeof memberships.$inferSelect;

class RoomStream extends ModelStream<typeof rooms> {
  static override model = rooms;
}

class MessageStream extends ModelStream<typeof messages> {
  static override model = messages;

  override onSave(message: Message, { created }: { created: boolean }) {
    expectTypeOf(message).toEqualTypeOf<typeof messages.$inferSelect>();
    expectTypeOf(created).toEqualTypeOf<boolean>();
    expectTypeOf(this.pk).toEqualTypeOf<number | undefined>();
  }
}

// the change context is typed from the table; broadcastsTo must return streams (never registered: types only)
class ContextStream extends ModelStream<typeof messages> {
  static override model = messages;
  static override broadcastsTo = (message: Message) => (message.body ? RoomStream.for(message.roomId) : null);

  override onSave(_message: Message, context: SaveContext<typeof messages>) {
    expectTypeOf(context.previous).toEqualTypeOf<Message | undefined>();
    expectTypeOf(context.changed).toEqualTypeOf<Array<keyof Message & string>>();
    expectTypeOf(context.version).toEqualTypeOf<number>();
    expectTypeOf(this.db.select).toBeFunction();
  }

  override onDelete(_message: Message, context: DeleteContext) {
    expectTypeOf(context.version).toEqualTypeOf<number>();
  }
}

// @ts-expect-error a mapping returns streams, not strings
class NotAStreamMapping extends ModelStream<typeof messages> {
  static override model = messages;
  static override broadcastsTo = (message: Message) => message.body;
}

// an app on PostgreSQL maps rows with an async query: a promise of streams compiles, a promise of anything else does not
class AsyncMapping extends ModelStream<typeof messages> {
  static override model = messages;
  static override broadcastsTo = async (message: Message) => [RoomStream.for(message.roomId)];
}

// @ts-expect-error a mapping's promise resolves to streams, not strings
class NotAStreamPromise extends ModelStream<typeof messages> {
  static override model = messages;
  static override broadcastsTo = async (message: Message) => message.body;
}

class MembershipStream extends ModelStream<typeof memberships> {
  static override model = memberships;
}

// README's plain stream: a user's notifications, gated by the stream's key
class NotificationsStream extends Stream {
  override userPassesTest(user: { id: number } | null) {
    return user !== null && this.parts[0] === String(user.id);
  }
}

describe("XStream.for(), the typed accessor of a row's stream", () => {
  it("declares the change context's types (checked by tsc)", () => {
    expect([
      ContextStream.broadcastsTo,
      NotAStreamMapping.model,
      AsyncMapping.model,
      NotAStreamPromise.model,
    ]).toHaveLength(4);
  });

  it("gives the class's own instance, with its pk typed from the key column", () => {
    const byKey = RoomStream.for(7);
    expectTypeOf(byKey).toExtend<RoomStream>();
    expectTypeOf(byKey.pk).toEqualTypeOf<number>();
    expectTypeOf(RoomStream.for({ id: 7, name: "x", isPrivate: false }).pk).toEqualTypeOf<number>();
    expectTypeOf(byKey.entity).toEqualTypeOf<Room | undefined>();
    expectTypeOf<ReturnType<typeof byKey.load>>().resolves.toEqualTypeOf<Room | undefined>();
    expect(byKey.pk).toBe(7);

    const all = RoomStream.all();
    expectTypeOf(all).toExtend<RoomStream>();
    expectTypeOf(all.pk).toEqualTypeOf<undefined>();
    expectTypeOf(all.isAll).toEqualTypeOf<true>();
    // inside hooks and userPassesTest `this` may be either
    expectTypeOf<RoomStream["pk"]>().toEqualTypeOf<number | undefined>();
  });

  it("types a key declared on the table (composite) as an object of the row's columns", () => {
    const stream = MembershipStream.for({ roomId: 3, userName: "ann" });
    expectTypeOf(stream).toExtend<MembershipStream>();
    expectTypeOf(stream.pk).toEqualTypeOf<Partial<Membership>>();
    expect(stream.pk).toEqual({ userName: "ann", roomId: 3 });
  });

  it("refuses a row of another table, a key of the wrong type and a scalar for a composite key", () => {
    function misuse(message: Message) {
      // @ts-expect-error a message row is neither a room row nor a room's key
      RoomStream.for(message);
      // @ts-expect-error a room's key is a number
      RoomStream.for("7");
      // @ts-expect-error a composite key takes { column: value }
      MembershipStream.for(1);
    }
    expectTypeOf(misuse).toBeFunction();
  });

  it("leaves .stream out of Drizzle's row types: RoomStream.for(row) is the typed way", () => {
    function read(db: BetterSQLite3Database<typeof schema>) {
      const room = db.select().from(rooms).get();
      if (!room) return;
      expectTypeOf(room).toEqualTypeOf<Room>();
      // @ts-expect-error present at run time, unknown to TypeScript
      void room.stream;
      expectTypeOf(RoomStream.for(room)).toExtend<RoomStream>();
    }
    expectTypeOf(read).toBeFunction();
  });
});

describe("hooks", () => {
  it("get the row typed from the table", () => {
    expectTypeOf<Parameters<MessageStream["onSave"]>[0]>().toEqualTypeOf<Message>();
    expectTypeOf<Parameters<MessageStream["onSave"]>[1]["created"]>().toEqualTypeOf<boolean>();
    expectTypeOf<Parameters<MessageStream["onDelete"]>[0]>().toEqualTypeOf<Message>();
    expectTypeOf<Parameters<ModelStream<typeof rooms>["onSave"]>[0]>().toEqualTypeOf<Room>();
  });

  it("do not compile with another table's row", () => {
    class WrongHook extends ModelStream<typeof messages> {
      static override model = messages;
      // @ts-expect-error a messages stream's hook gets a message, not a room
      override onSave(room: Room) {
        void room;
      }
    }
    expect(WrongHook.model).toBe(messages);
  });
});

describe("a plain Stream", () => {
  it("is typed as its class and reads its key in userPassesTest", () => {
    const mine = NotificationsStream.for(7);
    expectTypeOf(mine).toEqualTypeOf<NotificationsStream>();
    expect(mine.name).toBe("named:notifications:7");
    expect(mine.userPassesTest({ id: 7 })).toBe(true);
    expect(mine.userPassesTest({ id: 8 })).toBe(false);
    expect(mine.userPassesTest(null)).toBe(false);
  });

  it("types .for() and .all() as the subclass, and refuses target with targets", () => {
    expectTypeOf(RoomStream.for(1)).toExtend<RoomStream>();
    expectTypeOf(RoomStream.all()).toExtend<RoomStream>();
    expectTypeOf(NotificationsStream.for()).toEqualTypeOf<NotificationsStream>();
    // @ts-expect-error target and targets together do not compile
    const bad: Parameters<RoomStream["remove"]>[0] = { target: "a", targets: ".b" };
    void bad;
    expectTypeOf<Stream>().toHaveProperty("append");
  });
});
