/**
 * Domain errors. They carry a kind, not a transport code: only
 * `services/connect-errors.ts` turns a kind into a gRPC status, so the engine
 * and the scheduler never depend on Connect.
 */
export type ErrorKind =
  | "invalid_argument"
  | "out_of_range"
  | "resource_exhausted"
  | "not_found"
  | "unavailable"
  | "failed_precondition"
  | "deadline_exceeded"
  | "cancelled"
  | "internal";

export class ServiceError extends Error {
  override readonly name = "ServiceError";
  constructor(
    readonly kind: ErrorKind,
    message: string,
    readonly details: { retryAfterMs?: number } = {},
  ) {
    super(message);
  }
}

export function invalidArgument(message: string): ServiceError {
  return new ServiceError("invalid_argument", message);
}
