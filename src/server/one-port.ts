/**
 * One address for every protocol. Plaintext: each connection's first bytes
 * tell HTTP/2 with prior knowledge (the connection preface) from HTTP/1.1, and
 * the connection goes to the matching server; both share one request handler.
 * TLS: a secure HTTP/2 server that also speaks HTTP/1.1, chosen by ALPN.
 */
import { EventEmitter, once } from "node:events";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import type { Duplex } from "node:stream";

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** How often a connection's round trip is measured again (on its next call after this long). */
const ROUND_TRIP_EVERY_MS = 30_000;

/** Each HTTP/2 connection's latest PING round trip, in ms. */
const roundTrips = new WeakMap<http2.Http2Session, number>();

/**
 * The round trip of the connection a request came on: an HTTP/2 PING, sent
 * when the connection opens and again on a call at most every 30 s. Undefined
 * for HTTP/1.1 (no PING there) and until the first answer.
 */
export function connectionRoundTripMs(req: http.IncomingMessage | http2.Http2ServerRequest): number | undefined {
  const session = "stream" in req ? req.stream.session : undefined;
  return session ? roundTrips.get(session) : undefined;
}

export type RequestHandler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

export interface OnePortOptions {
  tls?: { cert: Buffer; key: Buffer };
  /** A connection that sends nothing for this long is closed. */
  firstBytesTimeoutMs?: number;
  /** HTTP/1.1 limits: whole request headers, and idle keep-alive connections. */
  headersTimeoutMs?: number;
  keepAliveTimeoutMs?: number;
  /** HTTP/2: streams a client may have open at once on one connection (nghttp2 ends a connection that opens more). */
  maxStreamsPerConnection?: number;
  /** Connections open at once, all clients together (more are closed on arrival). */
  maxConnections?: number;
  /** Connections open at once from one client address (more are closed on arrival); 0: no limit. */
  maxConnectionsPerClient?: number;
  /** An HTTP/2 connection with no open stream for this long is closed (GOAWAY). */
  idleTimeoutMs?: number;
}

export interface OnePortServer {
  readonly server: net.Server;
  listen(port: number, host: string): Promise<net.AddressInfo>;
  /** Stops accepting, and closes idle connections; streams still open keep going. */
  stopAccepting(): void;
  /** Closes every connection now. */
  destroyAll(): void;
  /**
   * Stops accepting, lets each HTTP/2 connection close once its open streams
   * have ended (their status and trailers sent), and closes whatever is still
   * open after `timeoutMs`.
   */
  close(timeoutMs: number): Promise<void>;
}

export function createOnePortServer(handler: RequestHandler, options: OnePortOptions = {}): OnePortServer {
  const sessions = new Set<http2.Http2Session>();
  /** Emits "closed" when the last HTTP/2 connection has closed. */
  const allClosed = new EventEmitter();
  const sockets = new Set<Duplex>();
  const idleTimeoutMs = options.idleTimeoutMs ?? 300_000;
  const trackSession = (session: http2.Http2Session) => {
    sessions.add(session);
    let pingedAt = 0;
    const measureRoundTrip = () => {
      if (session.closed || session.destroyed || Date.now() - pingedAt < ROUND_TRIP_EVERY_MS) return;
      pingedAt = Date.now();
      session.ping((error, ms) => {
        if (!error) roundTrips.set(session, ms);
      });
    };
    measureRoundTrip();
    // Idle means no open stream: a call waiting in the queue sends nothing for a while, and is not idle.
    let open = 0;
    let idle: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(idle);
      idle = setTimeout(() => session.close(), idleTimeoutMs).unref();
    };
    arm();
    session.on("stream", (stream: http2.ServerHttp2Stream) => {
      measureRoundTrip();
      open++;
      clearTimeout(idle);
      stream.once("close", () => {
        if (--open === 0 && !session.closed) arm();
      });
    });
    session.once("close", () => {
      clearTimeout(idle);
      sessions.delete(session);
      if (sessions.size === 0) allClosed.emit("closed");
    });
  };

  const h2Settings = { maxConcurrentStreams: options.maxStreamsPerConnection ?? 100 };
  const headersTimeout = options.headersTimeoutMs ?? 30_000;
  let server: net.Server;
  let h1: http.Server | undefined;
  if (options.tls) {
    const secure = http2.createSecureServer({ ...options.tls, allowHTTP1: true, settings: h2Settings }, handler as never);
    secure.on("session", trackSession);
    secure.on("secureConnection", (socket) => {
      sockets.add(socket);
      socket.once("close", () => sockets.delete(socket));
    });
    server = secure;
  } else {
    const h2 = http2.createServer({ settings: h2Settings }, handler as never);
    h2.on("session", trackSession);
    h1 = http.createServer(
      {
        headersTimeout,
        // Node checks the timeouts only this often (30 s by default): a slow client would get twice its time.
        connectionsCheckingInterval: Math.min(1000, headersTimeout / 2),
        keepAliveTimeout: options.keepAliveTimeoutMs ?? 5_000,
        requestTimeout: 0,
      },
      handler as never,
    );
    // h1 never listens itself: without this its timers never start.
    h1.emit("listening");
    const route = (socket: net.Socket) => {
      sockets.add(socket);
      socket.once("close", () => sockets.delete(socket));
      let seen = Buffer.alloc(0);
      const timer = setTimeout(() => socket.destroy(), options.firstBytesTimeoutMs ?? 10_000);
      const onData = (chunk: Buffer) => {
        seen = Buffer.concat([seen, chunk]);
        const n = Math.min(seen.length, PREFACE.length);
        const isH2 = seen.subarray(0, n).equals(PREFACE.subarray(0, n));
        if (isH2 && seen.length < PREFACE.length) return;
        clearTimeout(timer);
        socket.off("data", onData);
        socket.off("error", onError);
        socket.pause();
        socket.unshift(seen);
        if (isH2) {
          h2.emit("connection", socket);
        } else {
          h1!.emit("connection", socket);
          socket.resume();
        }
      };
      const onError = () => {
        clearTimeout(timer);
        socket.destroy();
      };
      socket.on("data", onData);
      socket.on("error", onError);
      socket.once("close", () => clearTimeout(timer));
    };
    server = net.createServer({ noDelay: true, allowHalfOpen: false }, route);
  }
  // Over the limit, Node closes a new connection as it arrives.
  if (options.maxConnections !== undefined) server.maxConnections = options.maxConnections;
  const perClient = options.maxConnectionsPerClient ?? 0;
  if (perClient > 0) {
    const open = new Map<string, number>();
    // First in line, before a TLS handshake or the protocol sniffing spends anything on it.
    server.prependListener("connection", (socket: net.Socket) => {
      const client = socket.remoteAddress ?? "";
      const count = (open.get(client) ?? 0) + 1;
      if (count > perClient) {
        socket.destroy();
        return;
      }
      open.set(client, count);
      socket.once("close", () => {
        const left = open.get(client)! - 1;
        if (left === 0) open.delete(client);
        else open.set(client, left);
      });
    });
  }

  const stopAccepting = () => {
    server.close();
    for (const session of sessions) session.close();
    h1?.closeIdleConnections();
  };
  const destroyAll = () => {
    for (const session of sessions) session.destroy();
    for (const socket of sockets) socket.destroy();
  };
  return {
    server,
    listen(port, host) {
      return new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, host, () => {
          server.off("error", reject);
          resolve(server.address() as net.AddressInfo);
        });
      });
    },
    stopAccepting,
    destroyAll,
    async close(timeoutMs) {
      stopAccepting();
      if (sessions.size > 0) await once(allClosed, "closed", { signal: AbortSignal.timeout(timeoutMs) }).catch(() => {});
      destroyAll();
    },
  };
}
