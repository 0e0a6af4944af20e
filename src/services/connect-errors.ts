/**
 * The transport edge for errors: domain error kinds become gRPC codes here
 * and nowhere else. Anything unexpected is logged and sent as a bare INTERNAL.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "pino";
import { type ErrorKind, ServiceError } from "../errors.js";

const CODES: Record<ErrorKind, Code> = {
  invalid_argument: Code.InvalidArgument,
  out_of_range: Code.OutOfRange,
  resource_exhausted: Code.ResourceExhausted,
  not_found: Code.NotFound,
  unavailable: Code.Unavailable,
  failed_precondition: Code.FailedPrecondition,
  deadline_exceeded: Code.DeadlineExceeded,
  cancelled: Code.Canceled,
  internal: Code.Internal,
};

const KINDS = new Map<Code, ErrorKind>(Object.entries(CODES).map(([kind, code]) => [code, kind as ErrorKind]));

/**
 * A transport error (what Connect aborts a call's signal with: the client's
 * cancel, Connect's own deadline timer) as the domain's error; a code with no
 * kind of its own is `internal`.
 */
export function fromConnectError(error: ConnectError): ServiceError {
  return new ServiceError(KINDS.get(error.code) ?? "internal", error.rawMessage);
}

export function toConnectError(error: unknown, log: Logger): ConnectError {
  if (error instanceof ConnectError) return error;
  if (error instanceof ServiceError) {
    const metadata = new Headers();
    if (error.details.retryAfterMs !== undefined) {
      metadata.set("grpc-retry-pushback-ms", String(error.details.retryAfterMs));
    }
    return new ConnectError(error.message, CODES[error.kind], metadata);
  }
  log.error({ err: error }, "unexpected error");
  return new ConnectError("internal error", Code.Internal);
}
