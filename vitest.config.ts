import { defineConfig } from "vitest/config";

export default defineConfig({
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
