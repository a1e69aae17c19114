import { defineConfig } from 'vite';
import { wgslText } from './tools/wgsl-plugin.ts';

export default defineConfig({
  plugins: [wgslText()],
  worker: { format: 'es', plugins: () => [wgslText()] },
  server: { host: 'localhost', port: 5173 },
  build: { target: 'es2022', sourcemap: true },
});
