import { createChatApp } from "./app.js";

// `npm start`: the demo chat on http://localhost:3000 (PORT overrides), on data/chat.db (CHAT_DB overrides).
const port = Number(process.env.PORT ?? 3000);
const host = process.env.HOST ?? "localhost";
const chat = await createChatApp();
chat.server.listen(port, host, () => {
  console.log(`turbocast chat on http://${host}:${port} (database ${process.env.CHAT_DB ?? "data/chat.db"})`);
});

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    void chat.close().then(() => process.exit(0));
  });
}
