/**
 * The official `openai` SDK against the service's OpenAI-compatible surface:
 *   npx tsx clients/openai-example.ts [base URL, default http://localhost:50051/v1]
 */
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.argv[2] ?? "http://localhost:50051/v1", apiKey: "not-needed" });
const stream = await client.chat.completions.create({
  model: "airavata", // the routing policy's choice; or a loaded variant's id
  messages: [{ role: "user", content: "भारत की राजधानी क्या है?" }],
  max_tokens: 32,
  stream: true,
  stream_options: { include_usage: true },
});
for await (const chunk of stream) {
  process.stdout.write(chunk.choices[0]?.delta.content ?? "");
  if (chunk.usage)
    process.stdout.write(
      `\n[${chunk.model}] ${chunk.usage.prompt_tokens} prompt + ${chunk.usage.completion_tokens} completion tokens\n`,
    );
}
