/**
 * A plain SVG line chart for the bench reports: one line per series over the
 * same x levels (concurrency), evenly spaced, y from 0 to the highest value.
 */
export interface ChartSeries {
  label: string;
  color: string;
  dashed?: boolean;
  /** One value per level, in the levels' order (NaN or missing: plotted as 0). */
  values: number[];
}

export function lineChart(title: string, levels: readonly number[], series: readonly ChartSeries[]): string {
  const W = 560;
  const H = 320;
  const top = Math.max(...series.flatMap((s) => s.values.filter(Number.isFinite)), 0);
  const maxY = top * 1.1 || 1;
  const x = (i: number) => 60 + (i / Math.max(1, levels.length - 1)) * (W - 100);
  const y = (v: number) => H - 40 - ((Number.isFinite(v) ? v : 0) / maxY) * (H - 80);
  const lines = series.map((s, i) => {
    const points = s.values.map((v, j) => `${x(j).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    const dash = s.dashed ? ' stroke-dasharray="6 4"' : "";
    return (
      `<polyline fill="none" stroke="${s.color}" stroke-width="2"${dash} points="${points}"/>` +
      `<text x="${W - 170}" y="${30 + i * 16}" fill="${s.color}">${s.label}</text>`
    );
  });
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>` +
    `<text x="60" y="20" font-weight="bold">${title}</text>` +
    `<line x1="60" y1="${H - 40}" x2="${W - 40}" y2="${H - 40}" stroke="#999"/><line x1="60" y1="40" x2="60" y2="${H - 40}" stroke="#999"/>` +
    `<text x="52" y="${y(top) + 4}" text-anchor="end">${top.toFixed(0)}</text><text x="52" y="${H - 36}" text-anchor="end">0</text>` +
    levels.map((c, j) => `<text x="${x(j)}" y="${H - 20}" text-anchor="middle">${c}</text>`).join("") +
    `${lines.join("")}</svg>\n`
  );
}
