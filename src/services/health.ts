/**
 * Standard gRPC health (grpc.health.v1.Health): a status per service name,
 * "" being the server as a whole. Watch streams every change until the client
 * leaves.
 */
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../gen/grpc/health/v1/health_pb.js";

export { Status as ServingStatus };

export class HealthRegistry {
  private readonly statuses = new Map<string, Status>();
  /** Names that come and go with what is loaded (one per variant), apart from the fixed ones. */
  private readonly extra = new Set<string>();
  private readonly listeners = new Set<() => void>();

  constructor(private readonly services: readonly string[]) {
    for (const name of ["", ...services]) this.statuses.set(name, Status.NOT_SERVING);
  }

  /** Sets the server ("") and every fixed service to `status`. */
  setAll(status: Status): void {
    for (const name of ["", ...this.services]) this.statuses.set(name, status);
    this.changed();
  }

  /** Replaces the names that come and go: one not in `statuses` is gone (Check: NOT_FOUND). */
  setExtra(statuses: Record<string, Status>): void {
    for (const name of this.extra) if (!(name in statuses)) this.statuses.delete(name);
    this.extra.clear();
    for (const [name, status] of Object.entries(statuses)) {
      this.extra.add(name);
      this.statuses.set(name, status);
    }
    this.changed();
  }

  private changed(): void {
    for (const listener of this.listeners) listener();
  }

  entries(): [string, Status][] {
    return [...this.statuses];
  }

  get(service: string): Status | undefined {
    return this.statuses.get(service);
  }

  /** Calls `listener` on every change; returns the unsubscribe function. */
  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

export function createHealthService(registry: HealthRegistry): ServiceImpl<typeof Health> {
  return {
    check(req) {
      const status = registry.get(req.service);
      if (status === undefined) throw new ConnectError(`unknown service "${req.service}"`, Code.NotFound);
      return { status };
    },
    list() {
      return { statuses: Object.fromEntries(registry.entries().map(([name, status]) => [name, { status }])) };
    },
    async *watch(req, ctx) {
      let wake: (() => void) | undefined;
      let changed = true;
      const unsubscribe = registry.subscribe(() => {
        changed = true;
        wake?.();
      });
      const onAbort = () => wake?.();
      ctx.signal.addEventListener("abort", onAbort);
      try {
        let last: Status | undefined;
        while (!ctx.signal.aborted) {
          if (changed) {
            changed = false;
            const status = registry.get(req.service) ?? Status.SERVICE_UNKNOWN;
            if (status !== last) {
              last = status;
              yield { status };
            }
          }
          if (!changed) await new Promise<void>((resolve) => (wake = resolve));
          wake = undefined;
        }
      } finally {
        unsubscribe();
        ctx.signal.removeEventListener("abort", onAbort);
      }
    },
  };
}
