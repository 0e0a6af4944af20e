/**
 * A local HTTP file server for download tests: serves files with Range
 * support, and can cut the connection half-way through the first full
 * download of a file, the way a flaky network does, or hold every transfer
 * after its first bytes until the test lets it go on.
 */
import { readFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";

export interface FileServer {
  url(name: string): string;
  /** Every request's file name and Range header, in order. */
  requests: { name: string; method: string; range: string | undefined }[];
  /** With `holdAfterBytes`: resolves once a transfer has sent the file up to that byte and waits. */
  holding(): Promise<void>;
  /** Lets held transfers finish (and later ones run straight through). */
  release(): void;
  close(): Promise<void>;
}

export async function startFileServer(
  files: Record<string, string>,
  options: { cutFirstDownload?: boolean; holdAfterBytes?: number } = {},
): Promise<FileServer> {
  const requests: FileServer["requests"] = [];
  let released = options.holdAfterBytes === undefined;
  const waiting: (() => void)[] = [];
  let onHolding: (() => void) | undefined;
  const holding = new Promise<void>((resolve) => (onHolding = resolve));
  const cut = new Set<string>();
  const server = http.createServer((req, res) => {
    const name = decodeURIComponent((req.url ?? "/").slice(1));
    const range = req.headers.range;
    requests.push({ name, method: req.method ?? "", range });
    const path = files[name];
    if (!path) {
      res.writeHead(404).end();
      return;
    }
    const body = readFileSync(path);
    const match = range ? /bytes=(\d+)-(\d*)/.exec(range) : null;
    const start = match ? Number(match[1]) : 0;
    const end = match && match[2] ? Number(match[2]) : body.length - 1;
    const headers = {
      "content-length": String(end - start + 1),
      "accept-ranges": "bytes",
      "content-type": "application/octet-stream",
    };
    if (match) res.writeHead(206, { ...headers, "content-range": `bytes ${start}-${end}/${body.length}` });
    else res.writeHead(200, headers);
    if (req.method === "HEAD") {
      res.end();
      return;
    }
    const slice = body.subarray(start, end + 1);
    if (!released && end >= options.holdAfterBytes!) {
      // Every transfer stops at the same byte of the file, whatever range it asked for.
      const upTo = Math.max(0, options.holdAfterBytes! - start);
      res.write(slice.subarray(0, upTo), () => {
        onHolding!();
        waiting.push(() => res.end(slice.subarray(upTo)));
      });
      return;
    }
    if (options.cutFirstDownload && !cut.has(name) && slice.length > 1024) {
      cut.add(name);
      res.write(slice.subarray(0, Math.floor(slice.length / 2)), () => setTimeout(() => res.socket?.destroy(), 50));
      return;
    }
    res.end(slice);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: (name) => `http://127.0.0.1:${port}/${encodeURIComponent(name)}`,
    requests,
    holding: () => holding,
    release() {
      released = true;
      for (const go of waiting.splice(0)) go();
    },
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
