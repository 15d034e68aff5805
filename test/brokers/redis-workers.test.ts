import { crossProcessTests } from "./cross-process.js";
import { REDIS_URL, deleteRedisKeys, describeWithServer, redisUnavailable, uniqueName } from "./servers.js";

describeWithServer("redis broker across three processes", await redisUnavailable(), () => {
  crossProcessTests("redis", () => {
    const keyPrefix = `${uniqueName("tc")}:`;
    return {
      options: (worker) => ({ url: REDIS_URL, keyPrefix, connectionName: `${keyPrefix.slice(0, -1)}-w${worker}` }),
      cleanup: () => deleteRedisKeys(REDIS_URL, keyPrefix),
    };
  });
});
