/**
 * The one request handler behind every protocol: CORS for configured
 * origins, `GET /metrics` for Prometheus, the OpenAI-compatible surface
 * under `/v1/`, the browser playground's files at `/`, and every RPC through
 * connect-node's adapter.
 */
import { existsSync } from "node:fs";
import type http from "node:http";
import type http2 from "node:http2";
import { cors as connectCors, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import cors from "cors";
import type { Registry } from "prom-client";
import sirv from "sirv";
import { METRIC_TRAILERS, QUEUE_POSITION_HEADER } from "../services/generation-service.js";
import { requestContextValues } from "../services/request-id.js";
import { useSpecGrpcMessage } from "./grpc-message.js";
import { connectionRoundTripMs, type RequestHandler } from "./one-port.js";
import { checkUnaryRequests, undecodableRequestInterceptor } from "./undecodable-requests.js";

/** Response headers and trailers a browser client may read. */
export const EXPOSED_HEADERS = [
  ...connectCors.exposedHeaders,
  "x-request-id",
  "grpc-retry-pushback-ms",
  QUEUE_POSITION_HEADER,
  // Connect unary responses carry trailers as `trailer-` headers.
  ...METRIC_TRAILERS.flatMap((name) => [name, `trailer-${name}`]),
];

export interface HttpHandlerOptions {
  routes: (router: ConnectRouter) => void;
  corsOrigins: readonly string[];
  maxMessageBytes: number;
  shutdownSignal: AbortSignal;
  registry: Registry;
  /** The built playground (clients/web/dist); a short landing page when it is not built. */
  webRoot: string;
  /** The OpenAI-compatible surface, for every path under `/v1/`. */
  openai?: (req: Req, res: Res) => void;
}

type Req = http.IncomingMessage | http2.Http2ServerRequest;
type Res = http.ServerResponse | http2.Http2ServerResponse;

const LANDING = `<!doctype html><meta charset="utf-8"><title>airavata-serve</title>
<h1>airavata-serve</h1><p>gRPC, gRPC-Web and Connect on this address: see <code>airavata.v1.GenerationService</code>
(server reflection is on). Prometheus metrics at <a href="/metrics">/metrics</a>.</p>
<p>The browser playground is not built: run <code>npm run build:web</code> (<code>npm start</code> does it).</p>`;

/** RPC paths are `/package.Service/Method`; everything else GET is a file. */
function isRpcPath(path: string | undefined): boolean {
  return /^\/[\w.]+\.[A-Z]\w*\/\w+$/.test(path ?? "");
}

export function createHttpHandler(options: HttpHandlerOptions): RequestHandler {
  const rpc = connectNodeAdapter({
    routes(router) {
      options.routes(router);
      checkUnaryRequests(router, options.maxMessageBytes);
    },
    interceptors: [undecodableRequestInterceptor],
    readMaxBytes: options.maxMessageBytes,
    shutdownSignal: options.shutdownSignal,
    contextValues: (req) => requestContextValues(req.headers, connectionRoundTripMs(req)),
  });
  const corsMiddleware =
    options.corsOrigins.length > 0
      ? cors({
          origin: options.corsOrigins.includes("*") ? "*" : [...options.corsOrigins],
          methods: [...connectCors.allowedMethods],
          allowedHeaders: [...connectCors.allowedHeaders, "authorization", "x-request-id"],
          exposedHeaders: EXPOSED_HEADERS,
          maxAge: 7200,
        })
      : undefined;

  // Static files only from the build folder (sirv refuses paths that leave it), never listed.
  const files = existsSync(options.webRoot) ? sirv(options.webRoot, { etag: true, dotfiles: false }) : undefined;

  const serve = (req: Req, res: Res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method === "GET" && path === "/metrics") {
      options.registry.metrics().then(
        (text) => {
          res.writeHead(200, { "content-type": options.registry.contentType });
          res.end(text);
        },
        () => {
          res.writeHead(500);
          res.end();
        },
      );
      return;
    }
    if (options.openai && path?.startsWith("/v1/")) {
      options.openai(req, res);
      return;
    }
    if ((req.method === "GET" || req.method === "HEAD") && !isRpcPath(path)) {
      const notFound = () => {
        if (path === "/") {
          res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
          res.end(LANDING);
        } else {
          res.writeHead(404, { "content-type": "text/plain" });
          res.end("not found\n");
        }
      };
      if (files) files(req as http.IncomingMessage, res as http.ServerResponse, notFound);
      else notFound();
      return;
    }
    const contentType = req.headers["content-type"] ?? "";
    if (contentType.startsWith("application/grpc") && !contentType.startsWith("application/grpc-web")) {
      useSpecGrpcMessage(res);
    }
    rpc(req, res);
  };

  return (req, res) => {
    if (!corsMiddleware) return serve(req, res);
    corsMiddleware(req as http.IncomingMessage, res as http.ServerResponse, () => serve(req, res));
  };
}
