import http from "node:http";
import { describe, expect, it } from "vitest";
import { ConfigError } from "../../src/errors.js";
import { LobbyStream, RoomStream, startApp } from "./fixture.js";
import { openSse, openWs, toWs, upgradeStatus, waitFor } from "../helpers.js";

describe("turbo.close()", () => {
  it("ends every subscription: SSE responses end, WebSockets close with 1001, upgrades are no longer served", async () => {
    const app = await startApp();
    const sseSrc = await app.pageSrc("/rooms/1");
    const wsSrc = await app.pageSrc("/rooms/1?transport=websocket");
    const ended = new Promise<string>((resolve, reject) => {
      http
        .get(`${app.url}${sseSrc}`, { headers: { Accept: "text/event-stream" } }, (res) => {
          let body = "";
          res
            .setEncoding("utf8")
            .on("data", (chunk: string) => (body += chunk))
            .on("end", () => resolve(body));
        })
        .on("error", reject);
    });
    const client = await openWs(wsSrc);
    await waitFor(() => app.turbo.hub.size === 2);
    await RoomStream.for(1).remove({ target: "last" });
    await app.turbo.close();
    expect(await ended).toContain('target="last"');
    expect(await client.closed).toEqual({ code: 1001, reason: "server shutting down" });
    expect(app.turbo.hub.size).toBe(0);
    // detached: the server no longer upgrades on the path, and the middleware
    // tells a reconnecting EventSource to come back later (a 503 would make it give up for good)
    expect(app.server.listenerCount("upgrade")).toBe(0);
    const late = await fetch(`${app.url}${sseSrc}`, { headers: { Accept: "text/event-stream" } });
    expect(late.status).toBe(200);
    expect(await late.text()).toBe("retry: 5000\n\n");
    await app.turbo.close(); // twice is fine
    expect(() => app.turbo.listen(app.server)).toThrow(/closed/);
    await app.close();
  });

  it("can be started and closed many times in one process", async () => {
    for (let round = 0; round < 6; round++) {
      const app = await startApp();
      const sse = openSse(`${app.url}${await app.pageSrc("/lobby")}`);
      const ws = await openWs(toWs(`${app.url}${await app.pageSrc("/lobby")}`));
      await sse.opened;
      await LobbyStream.for().remove({ target: `round_${round}` });
      await waitFor(() => sse.messages.length === 1 && ws.messages.length === 1);
      expect(sse.messages[0]!.data).toContain(`round_${round}`);
      await app.close();
      sse.source.close();
      expect((await ws.closed).code).toBe(1001);
    }
  });

  it("a createTurbo with bad delivery options throws a ConfigError before starting anything", async () => {
    for (const bad of [
      { path: "no-slash" },
      { path: "/trailing/" },
      { transport: "carrier-pigeon" },
      { heartbeatMs: 0 },
      { allowedOrigins: ["not a url"] },
      { maxStreamsPerSubscription: 1.5 },
    ]) {
      await expect(startApp(bad as never)).rejects.toBeInstanceOf(ConfigError);
    }
  });

  it("serves on a custom path, and answers other upgrade paths with 404 when it is the only listener", async () => {
    const app = await startApp({ path: "/live" });
    try {
      const src = await app.pageSrc("/lobby");
      expect(src.startsWith("/live?s=")).toBe(true);
      const client = openSse(`${app.url}${src}`);
      await client.opened;
      client.source.close();
      expect(await upgradeStatus(`${toWs(app.url)}/elsewhere`)).toBe(404);
      const script = await fetch(`${app.url}/live/client.js`);
      expect(script.status).toBe(200);
      expect(script.headers.get("content-type")).toMatch(/^text\/javascript/);
      expect(await script.text()).toContain("data-turbocast-position");
    } finally {
      await app.close();
    }
  });
});
