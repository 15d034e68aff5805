import { createChatApp } from "./app.js";
import { chatDatabaseUrl } from "./db.js";

// `npm start`: the demo chat on http://localhost:3000 (PORT overrides), on data/chat.db (CHAT_DB overrides),
// or on PostgreSQL with DATABASE_URL=postgres://… (and no CHAT_DB): tables created and seeded on first start.
const port = Number(process.env.PORT ?? 3000);
const host = process.env.HOST ?? "localhost";
const chat = await createChatApp();
chat.server.listen(port, host, () => {
  const database = chatDatabaseUrl() ? "PostgreSQL" : (process.env.CHAT_DB ?? "data/chat.db");
  console.log(`turbocast chat on http://${host}:${port} (database ${database})`);
});

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    void chat.close().then(() => process.exit(0));
  });
}
