import express from "express";
import http from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import type { Broker } from "../../src/brokers/broker.js";
import { type TurboLocals, pageMiddleware } from "../../src/delivery/page-middleware.js";
import type { StreamSourceRenderer } from "../../src/delivery/stream-source.js";
import { LogThrottle } from "../../src/log-throttle.js";
import { closeServer, listen, memoryLogger } from "../helpers.js";

let server: http.Server | undefined;

afterEach(async () => {
  if (server) await closeServer(server);
  server = undefined;
});

describe("page middleware", () => {
  it("serves pages through a broker outage and logs it once when it starts and once when it ends", async () => {
    let down = true;
    const broker = { head: async () => (down ? Promise.reject(new Error("ECONNREFUSED")) : "e.7") } as Broker;
    const logger = memoryLogger();
    const app = express();
    app.use(pageMiddleware({ broker, renderer: {} as StreamSourceRenderer, log: new LogThrottle(logger) }));
    app.get("/", (_req, res) => res.json({ position: (res.locals.turbocast as TurboLocals).position }));
    server = http.createServer(app);
    const { url } = await listen(server);
    const position = async () => ((await (await fetch(url)).json()) as { position: string | null }).position;

    for (let i = 0; i < 5; i++) expect(await position()).toBeNull();
    down = false;
    expect(await position()).toBe("e.7");
    expect(await position()).toBe("e.7");
    expect(logger.entries.map((e) => [e.level, e.message])).toEqual([
      ["warn", "broker.head() failed; this page subscribes from the moment it connects"],
      [
        "info",
        "broker.head() answers again; pages subscribe from their render-time position (4 more like it were not logged)",
      ],
    ]);
  });
});
