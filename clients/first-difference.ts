/**
 * Where two texts first differ, by character (code point, so a Devanagari
 * letter is never cut in half): what the compare views show for greedy
 * texts from two variants.
 */
export function firstDifference(a: string, b: string): number | undefined {
  const x = [...a];
  const y = [...b];
  for (let i = 0; i < Math.max(x.length, y.length); i++) if (x[i] !== y[i]) return i;
  return undefined;
}
