/**
 * What `Evaluate` measured of each variant, and its table and charts: kept
 * apart from the measuring (src/variants/evaluate.ts), which loads engines,
 * so a client printing a report never loads node-llama-cpp.
 */

export interface Evaluation {
  variantId: string;
  quantization: string;
  fileSizeBytes: number;
  parameterCount: number;
  bitsPerWeight: number;
  loadMs: number;
  ramBytes: number;
  vramBytes: number;
  timeToFirstTokenMs: number;
  decodeTokensPerSecond: number;
  perplexity: number;
  scoredTokens: number;
  /** Set when the variant could not be measured. */
  error?: string;
}

/** The side-by-side table, in markdown. */
export function evaluationMarkdown(results: readonly Evaluation[]): string {
  const rows = results.map((r) =>
    r.error
      ? `| ${r.variantId} | ${r.quantization || "-"} | ${(r.fileSizeBytes / 1e6).toFixed(1)} | - | - | - | - | - | - | - | error: ${r.error.replaceAll("|", "\\|")} |`
      : `| ${r.variantId} | ${r.quantization} | ${(r.fileSizeBytes / 1e6).toFixed(1)} | ${(r.parameterCount / 1e6).toFixed(1)}M | ` +
        `${r.bitsPerWeight.toFixed(2)} | ${r.loadMs.toFixed(0)} | ${(r.ramBytes / 2 ** 20).toFixed(0)} / ${(r.vramBytes / 2 ** 20).toFixed(0)} | ` +
        `${r.timeToFirstTokenMs.toFixed(1)} | ${r.decodeTokensPerSecond.toFixed(1)} | ${r.perplexity.toFixed(3)} (${r.scoredTokens} tok) | |`,
  );
  return [
    "| variant | quant | file MB | params | bits/weight | load ms | RAM / VRAM MiB | TTFT ms | decode tok/s | perplexity | note |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ...rows,
  ].join("\n");
}

/** Three bar charts side by side (bits per weight, decode tok/s, perplexity) as SVG. */
export function evaluationSvg(results: readonly Evaluation[]): string {
  const ok = results.filter((r) => !r.error);
  const panels: { title: string; value: (r: Evaluation) => number; format: (v: number) => string }[] = [
    { title: "bits per weight", value: (r) => r.bitsPerWeight, format: (v) => v.toFixed(2) },
    { title: "decode tokens/s", value: (r) => r.decodeTokensPerSecond, format: (v) => v.toFixed(0) },
    { title: "perplexity", value: (r) => r.perplexity, format: (v) => v.toFixed(2) },
  ];
  const barH = 22;
  const labelW = 120;
  const panelW = 300;
  const height = 40 + ok.length * (barH + 6) + 20;
  const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
  const parts = panels.map((panel, p) => {
    const x0 = p * (panelW + labelW + 20);
    const max = Math.max(...ok.map(panel.value), 1e-9);
    const bars = ok.map((r, i) => {
      const y = 40 + i * (barH + 6);
      const w = (panel.value(r) / max) * (panelW - 60);
      return (
        `<text x="${x0 + labelW - 6}" y="${y + 15}" text-anchor="end">${esc(r.variantId)}</text>` +
        `<rect x="${x0 + labelW}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="#4a7ab5"/>` +
        `<text x="${x0 + labelW + w + 4}" y="${y + 15}">${panel.format(panel.value(r))}</text>`
      );
    });
    return `<text x="${x0 + labelW}" y="24" font-weight="bold">${panel.title}</text>${bars.join("")}`;
  });
  const width = panels.length * (panelW + labelW + 20);
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">` +
    `<rect width="100%" height="100%" fill="white"/>${parts.join("")}</svg>\n`
  );
}
