// Two pages, one build: the chat client (/app/) and the operations
// dashboard (/admin/). Output goes to dist/www, which the gateway embeds at
// compile time (gateway-http/build.rs); shared chunks live under /static/.
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

export default defineConfig({
  base: '/',
  build: {
    // `npm run build` builds into .build-tmp and syncs changed files to
    // dist/www (scripts/sync-dist.mjs).
    outDir: 'dist/www',
    emptyOutDir: true,
    assetsDir: 'static',
    // Keep the embedded binary small and the pages self-contained.
    sourcemap: false,
    rollupOptions: {
      input: {
        app: here('app/index.html'),
        admin: here('admin/index.html'),
      },
    },
  },
});
