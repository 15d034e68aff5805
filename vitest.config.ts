import { defineConfig } from "vitest/config";

// "turbocast" (the demo's own imports) resolves to the TypeScript sources, not to a build in dist/
const conditions = ["turbocast-source"];

export default defineConfig({
  resolve: { conditions: [...conditions, "module", "node", "development|production"] },
  ssr: {
    resolve: {
      conditions: [...conditions, "module", "node", "development|production"],
      externalConditions: conditions,
    },
  },
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // integration tests open real servers, SQLite files and child processes
    pool: "forks",
    fileParallelism: true,
    maxWorkers: 2,
  },
});
