import { describe } from "vitest";
import { captureProcessesContract } from "./capture/contract.js";
import { sqliteDialect } from "./capture/sqlite.js";

describe("change capture across processes on SQLite", () => {
  captureProcessesContract(sqliteDialect);
});
