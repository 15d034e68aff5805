// npm run build (and npm pack, through "prepack"): compiles src/ (not the demo in src/app/)
// into dist/ as plain ES modules with type declarations, and copies the browser client script,
// so an app can import turbocast from plain Node, without tsx.
import { execFileSync } from "node:child_process";
import { cpSync, rmSync } from "node:fs";
import { createRequire } from "node:module";

const root = new URL("../", import.meta.url);
rmSync(new URL("dist/", root), { recursive: true, force: true });
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
execFileSync(process.execPath, [tsc, "-p", "tsconfig.build.json"], { cwd: root, stdio: "inherit" });
cpSync(new URL("src/delivery/client/", root), new URL("dist/delivery/client/", root), { recursive: true });
