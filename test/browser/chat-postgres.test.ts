/**
 * The demo chat on PostgreSQL (what `DATABASE_URL=postgres://… npm start`
 * runs), in Chromium: tables created and seeded on first start in a schema
 * of the test's own, a message and its edit and delete delivered to another
 * user over SSE and WebSocket, a room made private, and a row written by
 * `psql` shown live.
 */
import { describe, it } from "vitest";
import { createChatApp } from "../../src/app/app.js";
import { type TestSchema, createTestSchema } from "../postgres-app/pg-helpers.js";
import { browserTestsEnabled } from "./browser.js";
import {
  TRANSPORTS,
  chatInBrowser,
  deliverMessageEditAndDelete,
  makeListedRoomPrivate,
  messageItems,
  waitFor,
} from "./chat-harness.js";

const enabled = browserTestsEnabled();

describe.skipIf(!enabled)("the chat app on PostgreSQL in Chromium", () => {
  let schema: TestSchema;
  const harness = chatInBrowser({
    async start() {
      schema = await createTestSchema("tcchat");
      // the search_path rides in the URL, as a deployment's DATABASE_URL may carry it
      const url = `${schema.url}?options=${encodeURIComponent(`-c search_path=${schema.name}`)}`;
      return createChatApp({ databaseUrl: url, secret: "browser-test-secret-browser-test-secret" });
    },
    roomId: async (_chat, name) =>
      (await schema.admin.query(`SELECT id FROM "${schema.name}".rooms WHERE name = $1`, [name])).rows[0].id,
    cleanup: () => schema?.drop(),
  });

  for (const [label, room] of TRANSPORTS) {
    it(`delivers a message, its edit and its delete to another user over ${label}`, () =>
      deliverMessageEditAndDelete(harness, label, room));
  }

  it("removes a room made private from carol's open room list live (an async broadcastsTo), and keeps it on alice's", () =>
    makeListedRoomPrivate(harness));

  it("shows a row written by psql", async () => {
    const bob = await harness.signIn("bob");
    const id = await harness.roomId("general");
    await bob.goto(`${harness.base}/rooms/${id}`);
    const text = `from psql ${Date.now()}`;
    schema.psql(`INSERT INTO messages (room_id, user_id, body, created_at) VALUES (${id}, 1, '${text}', now())`);
    await waitFor(async () => (await messageItems(bob, text).count()) === 1, { message: "the psql write appears" });
    await bob.context().close();
  });
});
