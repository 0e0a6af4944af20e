/**
 * A grpc-js client for airavata-serve, shared by the command-line client, the
 * bench and the tests. Messages are encoded with the protobuf-es schemas
 * generated from proto/, so no second copy of the API exists.
 */
import { create, type DescMessage, fromBinary, type MessageInitShape, type MessageShape, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import {
  type GenerateRequestSchema,
  GenerateRequestSchema as GenerateRequestDesc,
  type GenerateResponse,
  GenerateResponseSchema,
  type GenerationMetrics,
  GenerationMetricsSchema,
  GenerationService,
  TokenizeRequestSchema,
  type TokenizeResponse,
  TokenizeResponseSchema,
} from "../src/gen/airavata/v1/generation_pb.js";

export type GenerateInit = MessageInitShape<typeof GenerateRequestSchema>;

/** How a call ended: its status, its trailers, and the metrics decoded from `airavata-metrics-bin`. */
export interface CallOutcome {
  code: grpc.status;
  /** The status name, e.g. "OK", "INVALID_ARGUMENT". */
  codeName: string;
  message: string;
  trailers: Record<string, string>;
  metrics: GenerationMetrics | undefined;
}

export interface GenerateOutcome extends CallOutcome {
  responses: GenerateResponse[];
  text: string;
}

export interface CallOptions {
  /** Milliseconds from now. */
  timeoutMs?: number;
  signal?: AbortSignal;
  metadata?: Record<string, string>;
}

function serializer<D extends DescMessage>(desc: D) {
  return (value: MessageShape<D>) => Buffer.from(toBinary(desc, value));
}
function deserializer<D extends DescMessage>(desc: D) {
  return (bytes: Buffer) => fromBinary(desc, bytes);
}

function outcomeOf(status: { code: grpc.status; details: string; metadata?: grpc.Metadata }): CallOutcome {
  const trailers: Record<string, string> = {};
  let metrics: GenerationMetrics | undefined;
  for (const [key, values] of Object.entries(status.metadata?.getMap() ?? {})) {
    if (key.endsWith("-bin")) {
      const bytes = status.metadata!.get(key)[0] as Buffer;
      trailers[key] = bytes.toString("base64");
      if (key === "airavata-metrics-bin") metrics = fromBinary(GenerationMetricsSchema, bytes);
    } else {
      trailers[key] = String(values);
    }
  }
  return {
    code: status.code,
    codeName: grpc.status[status.code] ?? String(status.code),
    message: status.details,
    trailers,
    metrics,
  };
}

function metadataOf(options: CallOptions): grpc.Metadata {
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries(options.metadata ?? {})) metadata.set(k, v);
  return metadata;
}

function callOptions(options: CallOptions): grpc.CallOptions {
  return options.timeoutMs === undefined ? {} : { deadline: new Date(Date.now() + options.timeoutMs) };
}

const path = (method: string) => `/${GenerationService.typeName}/${method}`;

export class AiravataClient {
  private readonly client: grpc.Client;

  /** `address` is host:port; plaintext HTTP/2 unless credentials say otherwise. */
  constructor(address: string, credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure()) {
    this.client = new grpc.Client(address, credentials);
  }

  /**
   * Streams a generation. `onResponse` sees each message as it arrives; the
   * promise resolves (never rejects for a gRPC status) with how the call ended.
   */
  generate(
    request: GenerateInit,
    onResponse?: (response: GenerateResponse) => void,
    options: CallOptions = {},
  ): Promise<GenerateOutcome> {
    const call = this.client.makeServerStreamRequest(
      path("Generate"),
      serializer(GenerateRequestDesc),
      deserializer(GenerateResponseSchema),
      create(GenerateRequestDesc, request),
      metadataOf(options),
      callOptions(options),
    );
    const onAbort = () => call.cancel();
    options.signal?.addEventListener("abort", onAbort, { once: true });
    const responses: GenerateResponse[] = [];
    return new Promise((resolve) => {
      call.on("data", (response: GenerateResponse) => {
        responses.push(response);
        onResponse?.(response);
      });
      call.on("error", () => {
        // reported through "status"
      });
      call.on("status", (status: grpc.StatusObject) => {
        options.signal?.removeEventListener("abort", onAbort);
        resolve({ ...outcomeOf(status), responses, text: responses.map((r) => r.text).join("") });
      });
    });
  }

  tokenize(
    text: string,
    options: CallOptions & { special?: boolean } = {},
  ): Promise<{ response?: TokenizeResponse } & CallOutcome> {
    return new Promise((resolve) => {
      let response: TokenizeResponse | undefined;
      const call = this.client.makeUnaryRequest(
        path("Tokenize"),
        serializer(TokenizeRequestSchema),
        deserializer(TokenizeResponseSchema),
        create(TokenizeRequestSchema, { text, special: options.special ?? false }),
        metadataOf(options),
        callOptions(options),
        (_error, value) => {
          response = value;
        },
      );
      call.on("status", (status: grpc.StatusObject) => resolve({ ...outcomeOf(status), response }));
    });
  }

  close(): void {
    this.client.close();
  }
}
