import { and, asc, eq, inArray } from "drizzle-orm";
import express, { type NextFunction, type Request, type Response } from "express";
import http from "node:http";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import nunjucks from "nunjucks";
import { type Broker, type Logger, type Turbo, createTurbo, domId } from "turbocast";
import { LogThrottle } from "../log-throttle.js";
import { canSeeRoom } from "./access.js";
import { type ChatDatabase, chatDatabaseUrl, openDatabase, openPostgresDatabase, setAppDb } from "./db.js";
import { type Room, type User, memberships, messages, rooms, users } from "./schema.js";
import { clearedSessionCookie, sessionCookie, sessionUserId } from "./session.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const require = createRequire(import.meta.url);

export interface ChatOptions {
  /** SQLite file. Default: CHAT_DB or data/chat.db (unless the app runs on PostgreSQL). */
  dbFile?: string;
  /**
   * PostgreSQL instead of SQLite: `postgres://…`. Default: DATABASE_URL when
   * neither `dbFile` nor CHAT_DB is set. Tables are created (and seeded) when missing.
   */
  databaseUrl?: string;
  /** Signs session cookies and stream names. Default: TURBOCAST_SECRET, else a development secret. */
  secret?: string;
  /** Scale-out broker; default in-memory. */
  broker?: Broker;
  /** Where turbocast and the app's error handler log. Default: turbocast's console logger. */
  logger?: Logger;
}

export interface ChatApp {
  app: express.Express;
  server: http.Server;
  turbo: Turbo;
  db: ChatDatabase;
  close(): Promise<void>;
}

declare module "express-serve-static-core" {
  interface Request {
    user?: User | null;
  }
}

/**
 * The demo's fixed secret signs cookies and stream names on a developer's
 * machine only: anyone can read it here, so production must set its own.
 */
function developmentSecret(): string {
  if (process.env.NODE_ENV === "production") {
    throw new Error("set TURBOCAST_SECRET (32+ random characters) to run the chat with NODE_ENV=production");
  }
  return "turbocast-demo-development-secret-not-for-production";
}

/** A transaction on the PostgreSQL database, typed like the app's db (node-postgres transactions are asynchronous; better-sqlite3's are not). */
function transactionPg<T>(db: ChatDatabase, fn: (tx: ChatDatabase) => Promise<T>): Promise<T> {
  return (db as unknown as { transaction(fn: (tx: ChatDatabase) => Promise<T>): Promise<T> }).transaction(fn);
}

/** Builds the demo chat app: Express, nunjucks views, turbocast on one http.Server. */
export async function createChatApp(options: ChatOptions = {}): Promise<ChatApp> {
  const databaseUrl = options.databaseUrl ?? (options.dbFile === undefined ? chatDatabaseUrl() : undefined);
  const opened = databaseUrl ? await openPostgresDatabase(databaseUrl) : openDatabase(options.dbFile);
  const { db } = opened;
  const closeDatabase = async () => {
    if ("pool" in opened) await opened.pool.end();
    else opened.sqlite.close();
  };
  setAppDb(db);
  const secret = options.secret ?? process.env.TURBOCAST_SECRET ?? developmentSecret();

  const views = new nunjucks.Environment(new nunjucks.FileSystemLoader(path.join(root, "views")), { autoescape: true });
  // builders are awaited, not .get()/.all()/.run(): the same code runs on SQLite and PostgreSQL
  const userFromRequest = async (req: http.IncomingMessage): Promise<User | null> => {
    const id = sessionUserId(req, secret);
    if (id === null) return null;
    const [user] = await db.select().from(users).where(eq(users.id, id));
    return user ?? null;
  };

  const turbo = await createTurbo({
    db,
    views,
    streams: path.join(root, "streams"),
    secret,
    authenticate: (req) => userFromRequest(req),
    ...(options.broker ? { broker: options.broker } : {}),
    ...(options.logger ? { logger: options.logger } : {}),
  });

  const app = express();
  views.express(app);
  app.set("view engine", "njk");
  app.disable("x-powered-by");
  app.use(express.urlencoded({ extended: false, limit: "16kb" }));
  app.get("/assets/turbo.js", (_req, res) => res.sendFile(require.resolve("@hotwired/turbo/dist/turbo.es2017-esm.js")));
  app.use("/assets", express.static(path.join(root, "public")));
  app.use(turbo.middleware());
  app.use(async (req, res, next) => {
    req.user = await userFromRequest(req);
    res.locals.currentUser = req.user;
    res.locals.turbocastClientUrl = turbo.clientScriptPath;
    next();
  });

  const signedIn = (req: Request, res: Response, next: NextFunction) => {
    if (req.user) return next();
    if (req.method === "GET") return res.redirect(303, "/login");
    res.status(401).render("error.njk", { status: 401, message: "Sign in first." });
  };

  /** The room, if the signed-in user may see it; otherwise answers 404 (a private room's existence is not revealed). */
  const visibleRoom = async (req: Request, res: Response): Promise<Room | undefined> => {
    const id = Number(req.params.id);
    const [room] = Number.isInteger(id) ? await db.select().from(rooms).where(eq(rooms.id, id)) : [];
    if (room && (await canSeeRoom(db, req.user!.id, room))) return room;
    res.status(404).render("error.njk", { status: 404, message: "No such room, or it is private." });
    return undefined;
  };

  const wantsStream = (req: Request) => (req.get("accept") ?? "").includes("text/vnd.turbo-stream.html");

  app.get("/login", (req, res) => {
    if (req.user) return res.redirect(303, "/");
    res.render("sessions/new.njk", {});
  });

  app.post("/login", async (req, res) => {
    const name = String(req.body?.name ?? "").trim();
    if (!/^[\p{L}\p{N} _.-]{1,40}$/u.test(name)) {
      return res.status(422).render("sessions/new.njk", {
        error: "Use 1 to 40 letters, digits, spaces, dots, dashes or underscores.",
        name,
      });
    }
    const [found] = await db.select().from(users).where(eq(users.name, name));
    const user = found ?? (await db.insert(users).values({ name }).returning())[0]!;
    res.setHeader("Set-Cookie", sessionCookie(user.id, secret));
    res.redirect(303, "/");
  });

  app.post("/logout", async (req, res) => {
    res.setHeader("Set-Cookie", clearedSessionCookie());
    // the user's open pages stop receiving at once: each gets a refresh and reloads into the login page.
    // (The demo's cookie is stateless, so pages of the same user in other browsers refresh too, and stay signed in.)
    // after the response has gone out: a page refreshed before this browser dropped the cookie would
    // reload still signed in and subscribe again
    const user = req.user;
    if (user) res.once("finish", () => void turbo.disconnect({ user }).catch(() => {}));
    res.redirect(303, "/login");
  });

  app.get("/", signedIn, async (req, res) => {
    const userId = req.user!.id;
    const all = await db.select().from(rooms).orderBy(asc(rooms.id));
    const visible = await Promise.all(all.map((room) => canSeeRoom(db, userId, room)));
    res.render("rooms/index.njk", {
      rooms: all.filter((_room, i) => visible[i]),
      roomsStream: turbo.registry.forTable(rooms)!.all(),
      myRoomsStream: turbo.registry.namedClass("user-rooms")!.for(userId),
    });
  });

  app.post("/rooms", signedIn, async (req, res) => {
    const name = String(req.body?.name ?? "")
      .trim()
      .slice(0, 60);
    if (!name) return res.status(422).render("error.njk", { status: 422, message: "A room needs a name." });
    const transport = req.body?.transport === "websocket" ? "websocket" : "sse";
    const isPrivate = req.body?.private === "1";
    const values = { name, transport, isPrivate, createdBy: req.user!.id } as const;
    const room =
      "pool" in opened
        ? // node-postgres transactions are asynchronous; better-sqlite3's are not
          await transactionPg(db, async (tx) => {
            const [created] = await tx.insert(rooms).values(values).returning();
            if (isPrivate) await tx.insert(memberships).values({ roomId: created!.id, userId: req.user!.id });
            return created!;
          })
        : db.transaction((tx) => {
            const created = tx.insert(rooms).values(values).returning().get();
            if (isPrivate) tx.insert(memberships).values({ roomId: created.id, userId: req.user!.id }).run();
            return created;
          });
    res.redirect(303, `/rooms/${room.id}`);
  });

  app.get("/rooms/:id", signedIn, async (req, res) => {
    const room = await visibleRoom(req, res);
    if (!room) return;
    // whole rows (not a join): they carry .stream, which dom_id needs
    const rows = await db.select().from(messages).where(eq(messages.roomId, room.id)).orderBy(asc(messages.id));
    const authors = new Map(
      (
        await db
          .select()
          .from(users)
          .where(inArray(users.id, [...new Set(rows.map((m) => m.userId))]))
      ).map((u) => [u.id, u]),
    );
    const list = rows.map((message) => ({ message, author: authors.get(message.userId) }));
    const members = room.isPrivate
      ? await db
          .select({ id: users.id, name: users.name })
          .from(memberships)
          .innerJoin(users, eq(users.id, memberships.userId))
          .where(eq(memberships.roomId, room.id))
          .orderBy(asc(users.name))
      : [];
    // the live message count (public/message-count.js) subscribes to the room's data events with it
    const roomData = turbo.signStreamName(turbo.registry.forTable(rooms)!.for(room.id).name);
    res.render("rooms/show.njk", { room, messages: list, members, roomData });
  });

  app.post("/rooms/:id/members", signedIn, async (req, res) => {
    const room = await visibleRoom(req, res);
    if (!room) return;
    if (!room.isPrivate || room.createdBy !== req.user!.id) {
      return res
        .status(403)
        .render("error.njk", { status: 403, message: "Only the creator of a private room adds members." });
    }
    const [member] = await db
      .select()
      .from(users)
      .where(eq(users.name, String(req.body?.name ?? "").trim()));
    if (!member) return res.status(422).render("error.njk", { status: 422, message: "No user by that name." });
    await db.insert(memberships).values({ roomId: room.id, userId: member.id }).onConflictDoNothing();
    res.redirect(303, `/rooms/${room.id}`);
  });

  app.post("/rooms/:id/private", signedIn, async (req, res) => {
    const room = await visibleRoom(req, res);
    if (!room) return;
    if (room.createdBy !== req.user!.id) {
      return res.status(403).render("error.njk", { status: 403, message: "Only its creator makes a room private." });
    }
    // the creator stays a member; RoomStream.broadcastsTo moves the room out of everyone else's list
    const membership = { roomId: room.id, userId: req.user!.id };
    if ("pool" in opened) {
      await transactionPg(db, async (tx) => {
        await tx.insert(memberships).values(membership).onConflictDoNothing();
        await tx.update(rooms).set({ isPrivate: true }).where(eq(rooms.id, room.id));
      });
    } else {
      db.transaction((tx) => {
        tx.insert(memberships).values(membership).onConflictDoNothing().run();
        tx.update(rooms).set({ isPrivate: true }).where(eq(rooms.id, room.id)).run();
      });
    }
    // the open pages of this room of everyone who is no longer allowed in stop receiving now (refreshed into not-found)
    await turbo.reauthorize({ stream: room });
    res.redirect(303, `/rooms/${room.id}`);
  });

  app.post("/rooms/:id/members/:userId/delete", signedIn, async (req, res) => {
    const room = await visibleRoom(req, res);
    if (!room) return;
    if (!room.isPrivate || room.createdBy !== req.user!.id) {
      return res
        .status(403)
        .render("error.njk", { status: 403, message: "Only the creator of a private room removes members." });
    }
    const memberId = Number(req.params.userId);
    if (memberId === room.createdBy) {
      return res.status(422).render("error.njk", { status: 422, message: "The creator stays a member." });
    }
    await db.delete(memberships).where(and(eq(memberships.roomId, room.id), eq(memberships.userId, memberId)));
    // the removed member's open pages of this room stop receiving at once, in every process: each gets
    // a refresh and reloads into the not-found page (the periodic re-check would catch it within reauthorizeMs)
    await turbo.disconnect({ user: memberId, stream: room });
    res.redirect(303, `/rooms/${room.id}`);
  });

  app.post("/rooms/:id/messages", signedIn, async (req, res) => {
    const room = await visibleRoom(req, res);
    if (!room) return;
    const body = String(req.body?.body ?? "")
      .trim()
      .slice(0, 2000);
    if (body) await db.insert(messages).values({ roomId: room.id, userId: req.user!.id, body });
    // the message itself arrives through the room's stream, in this page as in every other
    if (wantsStream(req)) {
      res.type("text/vnd.turbo-stream.html");
      const form = views.render("messages/_form.njk", { room });
      return res.send(
        `<turbo-stream action="replace" target="new_message"><template>${form}</template></turbo-stream>`,
      );
    }
    res.redirect(303, `/rooms/${room.id}`);
  });

  /** The signed-in user's own message, or answers 404. */
  const ownMessage = async (req: Request, res: Response) => {
    const id = Number(req.params.id);
    const [message] = Number.isInteger(id)
      ? await db
          .select()
          .from(messages)
          .where(and(eq(messages.id, id), eq(messages.userId, req.user!.id)))
      : [];
    if (!message) res.status(404).render("error.njk", { status: 404, message: "No such message of yours." });
    return message;
  };

  app.get("/messages/:id/edit", signedIn, async (req, res) => {
    const message = await ownMessage(req, res);
    if (message) res.render("messages/edit.njk", { message });
  });

  app.post("/messages/:id", signedIn, async (req, res) => {
    const message = await ownMessage(req, res);
    if (!message) return;
    const body = String(req.body?.body ?? "")
      .trim()
      .slice(0, 2000);
    if (!body) return res.status(422).render("messages/edit.njk", { message });
    const [updated] = await db
      .update(messages)
      .set({ body, editedAt: new Date() })
      .where(eq(messages.id, message.id))
      .returning();
    res.render("messages/_message.njk", { message: updated, author: req.user });
  });

  app.post("/messages/:id/delete", signedIn, async (req, res) => {
    const message = await ownMessage(req, res);
    if (!message) return;
    await db.delete(messages).where(eq(messages.id, message.id));
    if (wantsStream(req)) {
      res.type("text/vnd.turbo-stream.html");
      return res.send(`<turbo-stream action="remove" target="${domId(message)}"></turbo-stream>`);
    }
    res.redirect(303, `/rooms/${message.roomId}`);
  });

  app.use((_req, res) => {
    res.status(404).render("error.njk", { status: 404, message: "Not found." });
  });
  app.use(errorHandler(turbo.logger));

  const server = http.createServer(app);
  turbo.listen(server);

  let closed = false;
  return {
    app,
    server,
    turbo,
    db,
    async close() {
      if (closed) return;
      closed = true;
      await turbo.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      setAppDb(null);
      await closeDatabase();
    },
  };
}

/**
 * Answers what the routes and the body parser threw. Without it Express logs
 * a full stack per request and sends it back to the client: anyone can post
 * a `charset=utf-7` form or a 16 KB body, so a client error answers with a
 * short plain message and at most one throttled line; a server error logs
 * its stack (once per kind) but never shows it to the client.
 */
function errorHandler(logger: Logger) {
  const throttle = new LogThrottle(logger);
  return (error: unknown, req: Request, res: Response, next: NextFunction) => {
    if (res.headersSent) return next(error);
    const details = (error ?? {}) as { status?: unknown; statusCode?: unknown; expose?: unknown; type?: unknown };
    const given = Number(details.status ?? details.statusCode);
    const status = Number.isInteger(given) && given >= 400 && given < 600 ? given : 500;
    const message = error instanceof Error ? error.message : String(error);
    if (status < 500) {
      const kind = typeof details.type === "string" ? details.type : String(status);
      throttle.log(`client:${kind}`, "info", `request refused (${status}): ${firstLine(message)}`);
      // http-errors marks the messages that are safe to show (`unsupported charset "UTF-7"`)
      const text = details.expose === true ? firstLine(message) : http.STATUS_CODES[status];
      return res
        .status(status)
        .type("text/plain")
        .send(text ?? "Bad request");
    }
    throttle.log(`server:${req.method} ${req.route?.path ?? ""} ${firstLine(message)}`, "error", "request failed", {
      method: req.method,
      path: req.path,
      error: error instanceof Error ? error.stack : message,
    });
    res
      .status(status)
      .type("text/plain")
      .send(http.STATUS_CODES[status] ?? "Internal Server Error");
  };
}

function firstLine(text: string): string {
  return text.split(/\r?\n/, 1)[0]!.slice(0, 200);
}
