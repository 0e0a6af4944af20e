/**
 * Airavata's chat format: each turn as `<|role|>\n{content}\n`, then
 * `<|assistant|>\n` to open the reply. The newline after `<|assistant|>`
 * matters: the model was tuned to begin its answer after it. This is used on
 * purpose instead of detecting a format from the model file.
 */
import type { ChatTurn } from "../../generation.js";

export function formatAiravataChat(turns: readonly ChatTurn[]): string {
  let text = "";
  for (const turn of turns) text += `<|${turn.role}|>\n${turn.content}\n`;
  return `${text}<|assistant|>\n`;
}
