import { describe } from "vitest";
import { MemoryBroker } from "../../src/brokers/memory.js";
import { brokerContract } from "./contract.js";

describe("memory broker", () => {
  brokerContract(
    () => ({
      make: (options) => new MemoryBroker(options),
      loseHistory: async () => {},
      cleanup: async () => {},
    }),
    { shared: false, server: false },
  );
});
