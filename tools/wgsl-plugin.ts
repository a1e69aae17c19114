import type { Plugin } from 'vite';

/** Imports `*.wgsl` as a string module, so shaders load the same way in the app, in vitest and in bundles. */
export function wgslText(): Plugin {
  return {
    name: 'webtune-wgsl-text',
    transform(code, id) {
      if (!id.split('?')[0]!.endsWith('.wgsl')) return null;
      return { code: `export default ${JSON.stringify(code)};`, map: null };
    },
  };
}
