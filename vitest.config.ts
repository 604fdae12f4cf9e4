import { defineConfig } from 'vitest/config';

/** `npm run test:deploy` runs only the deploy tests (docker images and compose), which `npm test` leaves out */
const deploy = process.env.SMG_TEST_DEPLOY === '1';

export default defineConfig({
  test: {
    include: deploy
      ? ['chaos/deploy/**/*.test.ts']
      : [
          'src/**/*.test.ts',
          'bench/**/*.test.ts',
          'mesh/**/*.test.ts',
          'store/**/*.test.ts',
          'chaos/**/*.test.ts',
        ],
    exclude: ['dist/**', 'node_modules/**', ...(deploy ? [] : ['chaos/deploy/**'])],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // the deploy tests share one compose project and fixed host ports: one file at a time
    ...(deploy ? { fileParallelism: false } : {}),
  },
});
