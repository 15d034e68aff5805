import { readdir } from "node:fs/promises";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { ConfigError, StreamModuleError } from "../errors.js";
import { type AnyStreamClass, isStreamClass } from "./registry.js";

const MODULE_FILE = /\.(ts|mts|js|mjs)$/;
const SKIPPED_FILE = /(\.d\.(ts|mts)$)|(\.(test|spec)\.)/;

/** Every module file below `dir`, recursively, in a stable order; `_`-prefixed files and folders and tests are skipped. */
export async function listStreamModules(dir: string): Promise<string[]> {
  let entries: import("node:fs").Dirent[];
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (error) {
    throw new ConfigError(`streams folder ${dir} cannot be read`, { cause: error });
  }
  const files: string[] = [];
  for (const entry of entries.sort((a, b) => a.name.localeCompare(b.name))) {
    if (entry.name.startsWith("_") || entry.name.startsWith(".")) continue;
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      if (entry.name === "node_modules") continue;
      files.push(...(await listStreamModules(full)));
    } else if (MODULE_FILE.test(entry.name) && !SKIPPED_FILE.test(entry.name)) {
      files.push(full);
    }
  }
  return files;
}

/**
 * Imports every module of the streams folder and returns the Stream and
 * ModelStream subclasses they export. A module that fails to import is a
 * StreamModuleError naming the file and the cause.
 */
export async function discoverStreams(dir: string): Promise<AnyStreamClass[]> {
  const found = new Set<AnyStreamClass>();
  for (const file of await listStreamModules(path.resolve(dir))) {
    let mod: Record<string, unknown>;
    try {
      mod = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
    } catch (error) {
      throw new StreamModuleError(file, error);
    }
    for (const value of Object.values(mod)) {
      if (isStreamClass(value)) found.add(value);
    }
  }
  return [...found];
}
