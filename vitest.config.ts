import { defineConfig } from "vitest/config";

/**
 * Files whose assertions are about time as a client sees it (a 20 ms deadline
 * met with the trailers, say). With another file decoding on both cores, the
 * client's own timer can fire before it reads what the server sent in time
 * (2 of 60 such calls in one CI run): they run after the rest, one at a time.
 */
const ALONE = ["test/integration/cancel-deadline.test.ts"];

const shared = {
  globalSetup: ["test/helpers/global-setup.ts"],
  pool: "forks" as const,
  testTimeout: 60_000,
  hookTimeout: 120_000,
};

export default defineConfig({
  test: {
    projects: [
      {
        test: {
          ...shared,
          name: "suite",
          include: ["test/**/*.test.ts"],
          exclude: ALONE,
          // Each integration file runs a server with its own engine process; two at
          // a time is what two cores can take without timing noise turning into flakes.
          maxWorkers: 2,
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          ...shared,
          name: "alone",
          include: ALONE,
          fileParallelism: false,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
