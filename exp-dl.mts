import http from "node:http";
import { readFileSync, readdirSync, mkdirSync } from "node:fs";
import { createModelDownloader } from "node-llama-cpp";
const body = readFileSync("/work/main/.cache/test-models/tiny.f16.gguf");
const server = http.createServer((req, res) => {
  const m = req.headers.range ? /bytes=(\d+)-(\d*)/.exec(req.headers.range) : null;
  const start = m ? Number(m[1]) : 0;
  console.log("req", req.method, req.headers.range);
  res.writeHead(m ? 206 : 200, { "content-length": String(body.length - start), "accept-ranges": "bytes", ...(m ? { "content-range": `bytes ${start}-${body.length-1}/${body.length}` } : {}) });
  if (req.method === "HEAD") return res.end();
  let off = start;
  const t = setInterval(() => { if (off >= body.length) { clearInterval(t); res.end(); return; } res.write(body.subarray(off, off + 65536)); off += 65536; }, 100);
  res.on("close", () => clearInterval(t));
});
await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
const port = (server.address() as any).port;
const dir = "/tmp/exp/stage"; mkdirSync(dir, { recursive: true });
const ac = new AbortController();
const d = await createModelDownloader({ modelUri: `http://127.0.0.1:${port}/tiny.f16.gguf`, dirPath: dir, fileName: "x.gguf", skipExisting: false, deleteTempFileOnCancel: process.argv[2] === "del", showCliProgress: false,
  onProgress: (p) => { console.log("p", p.downloadedSize, readdirSync(dir)); if (p.downloadedSize > 300000 && !ac.signal.aborted) { console.log("abort at", p.downloadedSize, readdirSync(dir)); ac.abort(new Error("stop")); } } });
try { const r = await d.download({ signal: ac.signal }); console.log("resolved", r); } catch (e) { console.log("threw", (e as Error).message); }
await new Promise((r) => setTimeout(r, 500));
console.log("left", readdirSync(dir), readdirSync("/tmp/exp", {recursive:true}));
server.close(); server.closeAllConnections(); process.exit(0);
