import { defineConfig } from 'vitest/config';
import { wgslText } from './tools/wgsl-plugin.ts';

// Three projects: plain unit tests, GPU tests on a real WebGPU implementation (Dawn in Node; SwiftShader
// when no GPU is present) and browser end-to-end tests (headless Chromium, WebGPU on SwiftShader).
export default defineConfig({
  plugins: [wgslText()],
  test: {
    projects: [
      {
        plugins: [wgslText()],
        test: { name: 'unit', include: ['test/unit/**/*.test.ts'], environment: 'node' },
      },
      {
        plugins: [wgslText()],
        test: {
          name: 'gpu',
          include: ['test/gpu/**/*.test.ts'],
          environment: 'node',
          // SwiftShader is multi-threaded already; one file at a time keeps the machine responsive.
          fileParallelism: false,
          testTimeout: 120_000,
          hookTimeout: 60_000,
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test/e2e/**/*.test.ts'],
          environment: 'node',
          fileParallelism: false,
          testTimeout: 300_000,
          hookTimeout: 120_000,
        },
      },
    ],
  },
});
