/**
 * The Connect-ES clients a test can use: Connect over HTTP/1.1 and HTTP/2,
 * gRPC-Web over HTTP/1.1 and gRPC over HTTP/2, all from connect-node.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { type GenerateRequestSchema, type GenerateResponse, GenerationService } from "../../src/gen/airavata/v1/generation_pb.js";

export type ProtocolName = "connect-h1" | "connect-h2" | "grpc-web-h1" | "grpc-h2";

export function transportFor(protocol: ProtocolName, baseUrl: string): Transport {
  switch (protocol) {
    case "connect-h1":
      return createConnectTransport({ baseUrl, httpVersion: "1.1" });
    case "connect-h2":
      return createConnectTransport({ baseUrl, httpVersion: "2" });
    case "grpc-web-h1":
      return createGrpcWebTransport({ baseUrl, httpVersion: "1.1" });
    case "grpc-h2":
      return createGrpcTransport({ baseUrl });
  }
}

export interface ConnectOutcome {
  responses: GenerateResponse[];
  text: string;
  /** "ok" or the ConnectError's code name. */
  code: string;
  message: string;
  trailers: Headers;
  headers: Headers;
}

export async function generateOver(
  protocol: ProtocolName,
  baseUrl: string,
  request: MessageInitShape<typeof GenerateRequestSchema>,
  options: { timeoutMs?: number; signal?: AbortSignal; onResponse?: (r: GenerateResponse) => void } = {},
): Promise<ConnectOutcome> {
  const client = createClient(GenerationService, transportFor(protocol, baseUrl));
  const responses: GenerateResponse[] = [];
  let trailers = new Headers();
  let headers = new Headers();
  try {
    for await (const r of client.generate(request, {
      timeoutMs: options.timeoutMs,
      signal: options.signal,
      onTrailer: (t) => (trailers = t),
      onHeader: (h) => (headers = h),
    })) {
      responses.push(r);
      options.onResponse?.(r);
    }
    return { responses, text: responses.map((r) => r.text).join(""), code: "ok", message: "", trailers, headers };
  } catch (error) {
    const e = ConnectError.from(error);
    const { Code } = await import("@connectrpc/connect");
    return {
      responses,
      text: responses.map((r) => r.text).join(""),
      code: Code[e.code]!,
      message: e.rawMessage,
      trailers: e.metadata,
      headers,
    };
  }
}
