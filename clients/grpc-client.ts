/**
 * grpc-js clients for airavata-serve, shared by the command-line client, the
 * bench and the tests. Messages are encoded with the protobuf-es schemas
 * generated from proto/, so there is no second copy of the API.
 */
import {
  create,
  type DescMessage,
  type DescMethodServerStreaming,
  type DescMethodUnary,
  fromBinary,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import {
  AdminService,
  type EvaluateRequestSchema,
  type EvaluateResult,
  type LoadVariantRequestSchema,
  type SwapProgress,
  type SwapVariantRequestSchema,
  type UnloadVariantRequestSchema,
} from "../src/gen/airavata/v1/admin_pb.js";
import {
  type GenerateRequestSchema,
  type GenerateResponse,
  type GenerationMetrics,
  GenerationMetricsSchema,
  GenerationService,
  type TokenizeResponse,
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

export interface StreamOutcome<T> extends CallOutcome {
  responses: T[];
}

export interface GenerateOutcome extends StreamOutcome<GenerateResponse> {
  text: string;
}

export interface CallOptions {
  /** Milliseconds from now. */
  timeoutMs?: number;
  signal?: AbortSignal;
  metadata?: Record<string, string>;
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

const serializer =
  <D extends DescMessage>(desc: D) =>
  (value: MessageShape<D>) =>
    Buffer.from(toBinary(desc, value));
const deserializer =
  <D extends DescMessage>(desc: D) =>
  (bytes: Buffer) =>
    fromBinary(desc, bytes);

function callOptions(options: CallOptions): grpc.CallOptions {
  return options.timeoutMs === undefined ? {} : { deadline: new Date(Date.now() + options.timeoutMs) };
}

/** Calls any method of the generated services over one grpc-js channel. */
class Caller {
  readonly client: grpc.Client;

  constructor(
    address: string,
    credentials: grpc.ChannelCredentials,
    private readonly baseMetadata: Record<string, string> = {},
  ) {
    this.client = new grpc.Client(address, credentials);
  }

  private metadata(options: CallOptions): grpc.Metadata {
    const metadata = new grpc.Metadata();
    for (const [k, v] of Object.entries({ ...this.baseMetadata, ...options.metadata })) metadata.set(k, v);
    return metadata;
  }

  unary<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    request: MessageInitShape<I>,
    options: CallOptions = {},
  ): Promise<{ response?: MessageShape<O> } & CallOutcome> {
    return new Promise((resolve) => {
      let response: MessageShape<O> | undefined;
      const call = this.client.makeUnaryRequest(
        `/${method.parent.typeName}/${method.name}`,
        serializer(method.input),
        deserializer(method.output),
        create(method.input, request),
        this.metadata(options),
        callOptions(options),
        (_error, value) => (response = value),
      );
      call.on("status", (status: grpc.StatusObject) => resolve({ ...outcomeOf(status), response }));
    });
  }

  /** Resolves (never rejects for a gRPC status) with every message and how the call ended. */
  stream<I extends DescMessage, O extends DescMessage>(
    method: DescMethodServerStreaming<I, O>,
    request: MessageInitShape<I>,
    onResponse?: (response: MessageShape<O>) => void,
    options: CallOptions = {},
  ): Promise<StreamOutcome<MessageShape<O>>> {
    const call = this.client.makeServerStreamRequest(
      `/${method.parent.typeName}/${method.name}`,
      serializer(method.input),
      deserializer(method.output),
      create(method.input, request),
      this.metadata(options),
      callOptions(options),
    );
    const onAbort = () => call.cancel();
    options.signal?.addEventListener("abort", onAbort, { once: true });
    const responses: MessageShape<O>[] = [];
    return new Promise((resolve) => {
      call.on("data", (response: MessageShape<O>) => {
        responses.push(response);
        onResponse?.(response);
      });
      call.on("error", () => {
        // reported through "status"
      });
      call.on("status", (status: grpc.StatusObject) => {
        options.signal?.removeEventListener("abort", onAbort);
        resolve({ ...outcomeOf(status), responses });
      });
    });
  }
}

export class AiravataClient {
  private readonly caller: Caller;

  /** `address` is host:port; plaintext HTTP/2 unless credentials say otherwise. */
  constructor(address: string, credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure()) {
    this.caller = new Caller(address, credentials);
  }

  /** Streams a generation; `onResponse` sees each message as it arrives. */
  async generate(
    request: GenerateInit,
    onResponse?: (response: GenerateResponse) => void,
    options: CallOptions = {},
  ): Promise<GenerateOutcome> {
    const outcome = await this.caller.stream(GenerationService.method.generate, request, onResponse, options);
    return { ...outcome, text: outcome.responses.map((r) => r.text).join("") };
  }

  tokenize(
    text: string,
    options: CallOptions & { special?: boolean } = {},
  ): Promise<{ response?: TokenizeResponse } & CallOutcome> {
    return this.caller.unary(GenerationService.method.tokenize, { text, special: options.special ?? false }, options);
  }

  close(): void {
    this.caller.client.close();
  }
}

/** AdminService, with the bearer token on every call. */
export class AdminClient {
  private readonly caller: Caller;

  constructor(
    address: string,
    token: string | undefined,
    credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure(),
  ) {
    this.caller = new Caller(address, credentials, token ? { authorization: `Bearer ${token}` } : {});
  }

  listVariants(options: CallOptions = {}) {
    return this.caller.unary(AdminService.method.listVariants, {}, options);
  }

  getStatus(options: CallOptions = {}) {
    return this.caller.unary(AdminService.method.getStatus, {}, options);
  }

  evaluate(
    request: MessageInitShape<typeof EvaluateRequestSchema>,
    onResult?: (result: EvaluateResult) => void,
    options: CallOptions = {},
  ): Promise<StreamOutcome<EvaluateResult>> {
    return this.caller.stream(AdminService.method.evaluate, request, onResult, options);
  }

  loadVariant(
    request: MessageInitShape<typeof LoadVariantRequestSchema>,
    onProgress?: (progress: SwapProgress) => void,
    options: CallOptions = {},
  ): Promise<StreamOutcome<SwapProgress>> {
    return this.caller.stream(AdminService.method.loadVariant, request, onProgress, options);
  }

  unloadVariant(
    request: MessageInitShape<typeof UnloadVariantRequestSchema>,
    onProgress?: (progress: SwapProgress) => void,
    options: CallOptions = {},
  ): Promise<StreamOutcome<SwapProgress>> {
    return this.caller.stream(AdminService.method.unloadVariant, request, onProgress, options);
  }

  /** Out of a balancer's rotation (health NOT_SERVING, calls still served), or back with `resume`. */
  drain(resume: boolean, options: CallOptions = {}) {
    return this.caller.unary(AdminService.method.drain, { resume }, options);
  }

  setRouting(weights: Record<string, number>, options: CallOptions = {}) {
    return this.caller.unary(AdminService.method.setRouting, { weights }, options);
  }

  swapVariant(
    request: MessageInitShape<typeof SwapVariantRequestSchema>,
    onProgress?: (progress: SwapProgress) => void,
    options: CallOptions = {},
  ): Promise<StreamOutcome<SwapProgress>> {
    return this.caller.stream(AdminService.method.swapVariant, request, onProgress, options);
  }

  close(): void {
    this.caller.client.close();
  }
}
