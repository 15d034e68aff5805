import { crossProcessTests } from "./cross-process.js";
import { PG_URL, describeWithServer, dropPostgresNamespace, postgresUnavailable, uniqueName } from "./servers.js";

describeWithServer("postgres broker across three processes", await postgresUnavailable(), () => {
  crossProcessTests("postgres", () => {
    const prefix = uniqueName("tc");
    return {
      options: (worker) => ({ connectionString: PG_URL, prefix, applicationName: `${prefix}_w${worker}` }),
      cleanup: () => dropPostgresNamespace(PG_URL, prefix),
    };
  });
});
