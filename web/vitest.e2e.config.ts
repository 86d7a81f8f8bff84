// Browser tests: the real `tern serve --demo` binary and headless Chromium
// (Debian's package) driven by playwright-core. One file at a time: each
// starts its own server and browser, and the machine may have two cores.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['e2e/**/*.e2e.ts'],
    environment: 'node',
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 60_000,
    teardownTimeout: 20_000,
  },
});
