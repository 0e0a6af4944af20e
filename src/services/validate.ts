/**
 * Request validation: turns a GenerateRequest into engine input and sampling
 * settings with defaults, or throws `invalid_argument` naming the field.
 */
import { randomInt } from "node:crypto";
import { invalidArgument } from "../errors.js";
import type { ChatTurn, GenerationInput, SamplingSettings } from "../generation.js";
import type { GenerateRequest } from "../gen/airavata/v1/generation_pb.js";

export const DEFAULTS = {
  maxNewTokens: 256,
  temperature: 0.8,
  topK: 40,
  topP: 0.95,
  minP: 0.05,
  repeatPenalty: 1.1,
} as const;

export const LIMITS = {
  maxStopStrings: 16,
  maxStopLength: 256,
  maxMessages: 512,
} as const;

const ROLES = new Set(["system", "user", "assistant"]);

function inRange(
  field: string,
  value: number | undefined,
  min: number,
  max: number,
  fallback: number,
  minExclusive = false,
): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value)) throw invalidArgument(`${field} must be a finite number, got ${value}`);
  if (value < min || value > max || (minExclusive && value === min)) {
    throw invalidArgument(`${field} must be in ${minExclusive ? "(" : "["}${min}, ${max}], got ${value}`);
  }
  return value;
}

export function validateGenerateRequest(req: GenerateRequest): { input: GenerationInput; sampling: SamplingSettings } {
  const hasPrompt = req.prompt !== "";
  const hasMessages = req.messages.length > 0;
  if (hasPrompt && hasMessages) throw invalidArgument("set either prompt or messages, not both");
  if (!hasPrompt && !hasMessages) throw invalidArgument("prompt is empty: send a prompt or a list of messages");
  let input: GenerationInput;
  if (hasPrompt) {
    input = req.raw ? { kind: "raw", text: req.prompt } : { kind: "chat", messages: [{ role: "user", content: req.prompt }] };
  } else {
    if (req.raw) throw invalidArgument("raw applies to prompt only, not to messages");
    if (req.messages.length > LIMITS.maxMessages) {
      throw invalidArgument(`at most ${LIMITS.maxMessages} messages, got ${req.messages.length}`);
    }
    const turns: ChatTurn[] = req.messages.map((m, i) => {
      if (!ROLES.has(m.role)) {
        throw invalidArgument(`messages[${i}].role ${JSON.stringify(m.role)} is unknown: use system, user or assistant`);
      }
      if (m.content === "") throw invalidArgument(`messages[${i}].content is empty`);
      return { role: m.role as ChatTurn["role"], content: m.content };
    });
    if (turns.at(-1)?.role !== "user") throw invalidArgument("the last message must have role user");
    input = { kind: "chat", messages: turns };
  }
  if (req.maxNewTokens === 0) throw invalidArgument("max_new_tokens must be at least 1");
  if (req.stop.length > LIMITS.maxStopStrings) {
    throw invalidArgument(`at most ${LIMITS.maxStopStrings} stop strings, got ${req.stop.length}`);
  }
  req.stop.forEach((s, i) => {
    if (s === "") throw invalidArgument(`stop[${i}] is empty`);
    if (s.length > LIMITS.maxStopLength) throw invalidArgument(`stop[${i}] is longer than ${LIMITS.maxStopLength} characters`);
  });
  const sampling: SamplingSettings = {
    maxNewTokens: req.maxNewTokens ?? DEFAULTS.maxNewTokens,
    temperature: inRange("temperature", req.temperature, 0, 2, DEFAULTS.temperature),
    topK: req.topK ?? DEFAULTS.topK,
    topP: inRange("top_p", req.topP, 0, 1, DEFAULTS.topP, true),
    minP: inRange("min_p", req.minP, 0, 1, DEFAULTS.minP),
    repeatPenalty: inRange("repeat_penalty", req.repeatPenalty, 0, 10, DEFAULTS.repeatPenalty, true),
    seed: req.seed ?? randomInt(0, 2 ** 32),
    stop: [...req.stop],
  };
  return { input, sampling };
}
