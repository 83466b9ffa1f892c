// The hash of the dashboard's sources, recorded in the build (static/build-info.json) so a unit test
// (tests/unit/dashboard/test_build_info.py, same algorithm) fails when a source changed without a rebuild.
import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative, sep } from "node:path";

function files(root: string, dir: string = root): string[] {
  const found: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.name.startsWith(".") || entry.name === "node_modules") continue;
    const path = join(dir, entry.name);
    if (entry.isDirectory()) found.push(...files(root, path));
    else if (entry.isFile()) found.push(relative(root, path).split(sep).join("/"));
  }
  return found;
}

// sha256 over "path\0sha256(content)\n" for every file, paths sorted (hidden files and node_modules/ left out).
export function sourcesHash(root: string): { sources_sha256: string; files: number } {
  const paths = files(root).sort();
  const whole = createHash("sha256");
  for (const path of paths) {
    const content = createHash("sha256").update(readFileSync(join(root, path))).digest("hex");
    whole.update(`${path}\0${content}\n`);
  }
  return { sources_sha256: whole.digest("hex"), files: paths.length };
}
