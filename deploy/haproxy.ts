/**
 * The fleet's layer-7 balancer: an HAProxy configuration for replicas of the
 * service on loopback ports. HTTP/2 end to end (clients' h2c is detected on
 * the same port as HTTP/1.1; every replica is spoken to over h2, so a gRPC
 * stream and a browser's HTTP/1.1 call share the backend connections), one
 * request at a time to the replica with the fewest in flight, and an active
 * health check that reads grpc.health.v1 through Connect's unary JSON form:
 * a plain HTTP POST whose body says "SERVING".
 */

export interface HaproxyOptions {
  /** Where clients connect. */
  host: string;
  port: number;
  /** The replicas' ports, on `host`. */
  replicas: number[];
  /** The stats page (CSV at /stats;csv), which the fleet script and its tests read. */
  statsPort: number;
  /** Health check every this many ms; a replica is out after `fall` failed checks in a row. */
  checkIntervalMs: number;
  fall: number;
  rise: number;
}

export const HAPROXY_DEFAULTS: HaproxyOptions = {
  host: "127.0.0.1",
  port: 50051,
  replicas: [50101, 50102, 50103],
  statsPort: 50150,
  checkIntervalMs: 500,
  fall: 2,
  rise: 1,
};

export function haproxyConfig(o: HaproxyOptions): string {
  const servers = o.replicas.map((port, i) => `  server r${i + 1} ${o.host}:${port}`);
  return `# HAProxy in front of ${o.replicas.length} airavata-serve replicas (written by deploy/haproxy.ts; npm run fleet).
global
  maxconn 4096

defaults
  mode http
  timeout connect 2s
  timeout http-request 30s
  # Streams last as long as a generation: the service's own deadlines and grace period bound them.
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h

frontend airavata
  # No "proto" here: HAProxy reads an HTTP/2 preface (gRPC's h2c) or HTTP/1.1 on the one port.
  bind ${o.host}:${o.port}
  default_backend replicas

backend replicas
  # Per request, to the replica with the fewest in flight: a generation holds its replica for seconds.
  balance leastconn
  # Retried on another replica only when nothing reached the client yet: the connection failed or
  # the replica closed it without a byte (a replica killed before it answered).
  retries 2
  option redispatch 1
  retry-on conn-failure empty-response
  # grpc.health.v1.Health/Check in Connect's JSON form over HTTP/1.1; "NOT_SERVING" does not match.
  option httpchk
  http-check send meth POST uri /grpc.health.v1.Health/Check ver HTTP/1.1 hdr host localhost hdr content-type application/json body "{\\"service\\":\\"\\"}"
  http-check expect rstring "\\"status\\":\\"SERVING\\""
  # Out of rotation within ${o.fall} × ${o.checkIntervalMs} ms of going NOT_SERVING (or dying); back after ${o.rise} good check(s).
  default-server proto h2 check inter ${o.checkIntervalMs} fall ${o.fall} rise ${o.rise}
${servers.join("\n")}

listen stats
  bind ${o.host}:${o.statsPort}
  stats enable
  stats uri /stats
  stats refresh 1s
`;
}

/** One replica as the balancer sees it. */
export interface ReplicaState {
  /** UP, DOWN, "UP 1/2" (one failed check), "DOWN 1/1" (coming back), … */
  status: string;
  /** Calls (HTTP requests) it has been given since the balancer started. */
  sessions: number;
}

/** The balancer's view of each replica (r1, r2, …), from its stats page's CSV, columns by their header names. */
export async function replicaStates(host: string, statsPort: number): Promise<Record<string, ReplicaState>> {
  const [header = "", ...rows] = (await (await fetch(`http://${host}:${statsPort}/stats;csv`)).text()).split("\n");
  const column = (name: string) => header.replace(/^# /, "").split(",").indexOf(name);
  const [proxy, server, status, sessions] = [column("pxname"), column("svname"), column("status"), column("stot")];
  const out: Record<string, ReplicaState> = {};
  for (const row of rows) {
    const cells = row.split(",");
    if (cells[proxy] === "replicas" && /^r\d+$/.test(cells[server] ?? "")) {
      out[cells[server]!] = { status: cells[status] ?? "", sessions: Number(cells[sessions]) };
    }
  }
  return out;
}
