import { fileURLToPath } from "node:url";
import { defineConfig, type Plugin } from "vite";
import { sourcesHash } from "./build-info";

const root = fileURLToPath(new URL(".", import.meta.url));

function buildInfo(): Plugin {
  return {
    name: "innerloop-build-info",
    generateBundle() {
      const info = { ...sourcesHash(root), built_by: "hack/dashboard-build" };
      this.emitFile({ type: "asset", fileName: "build-info.json", source: JSON.stringify(info, null, 2) + "\n" });
    },
  };
}

export default defineConfig({
  // Preact's JSX through esbuild: no Babel, no extra plugin.
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    outDir: fileURLToPath(new URL("../../src/innerloop/dashboard/static", import.meta.url)),
    emptyOutDir: true,
    target: "es2022",
    reportCompressedSize: false,
  },
  plugins: [buildInfo()],
});
