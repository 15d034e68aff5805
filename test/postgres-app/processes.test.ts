import { describe } from "vitest";
import { captureProcessesContract } from "../capture/contract.js";
import { postgresDialect } from "../capture/postgres.js";

describe("change capture across processes on PostgreSQL", () => {
  captureProcessesContract(postgresDialect);
});
