// src/schema.ts is what openapi-typescript makes of openapi.yaml. Without --write this checks
// that it still is, and fails otherwise, so a change to the API cannot go unnoticed by the
// client: run `npm run generate`, then `npm run build` and fix what the compiler reports.
//
//   node scripts/schema.mjs [--write] [path/to/openapi.yaml]   (default: the repository's)

import { execFileSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

// Defaults do not make a field required: a request may leave out `quantity` or `amount`.
const FLAGS = ["--default-non-nullable", "false"];

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const args = process.argv.slice(2);
const write = args.includes("--write");
const spec = resolve(
  args.find((arg) => arg !== "--write") ?? join(root, "..", "..", "openapi.yaml"),
);
const committed = join(root, "src", "schema.ts");
const cli = join(root, "node_modules", "openapi-typescript", "bin", "cli.js");

const scratch = mkdtempSync(join(tmpdir(), "billing-schema-"));
try {
  const fresh = join(scratch, "schema.ts");
  execFileSync(process.execPath, [cli, spec, "--output", fresh, ...FLAGS], {
    stdio: ["ignore", "ignore", "inherit"],
  });
  if (write) {
    copyFileSync(fresh, committed);
    console.log(`src/schema.ts generated from ${spec}`);
  } else if (readFileSync(fresh, "utf8") !== readFileSync(committed, "utf8")) {
    console.error(
      `src/schema.ts does not match ${spec}.\n` +
        "Regenerate it with `npm run generate` in clients/typescript, then build (`npm run build`)" +
        " and fix what the compiler reports.",
    );
    process.exit(1);
  } else {
    console.log(`src/schema.ts matches ${spec}`);
  }
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
