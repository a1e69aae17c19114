// Shared esbuild settings for the Node bundles (CLI, benchmarks): WGSL inlined as text, `webgpu` kept
// external (it is a native module; on the lent GPU it comes from .gpu/), everything else bundled.
export const nodeBundle = {
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  loader: { '.wgsl': 'text' },
  external: ['webgpu'],
  sourcemap: 'inline',
  logLevel: 'warning',
  // Some CommonJS dependencies call require() for Node built-ins; give the ESM bundle one.
  banner: { js: "import { createRequire as __wtCreateRequire } from 'node:module'; const require = __wtCreateRequire(import.meta.url);" },
};
