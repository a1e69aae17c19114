// WGSL files are imported as text: Vite via the plugin in vite.config.ts, esbuild via its 'text' loader.
declare module '*.wgsl' {
  const source: string;
  export default source;
}
