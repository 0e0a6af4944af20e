import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { create, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../../src/gen/grpc/health/v1/health_pb.js";
import {
  ServerReflection as ReflectionV1,
  ServerReflectionRequestSchema,
} from "../../src/gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ReflectionV1Alpha } from "../../src/gen/grpc/reflection/v1alpha/reflection_pb.js";
import { ROOT, startTestServer, type TestServer } from "../helpers/server.js";

const exec = promisify(execFile);
let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await server.app.shutdown();
});

async function reflect(service: typeof ReflectionV1 | typeof ReflectionV1Alpha, requests: object[]) {
  const client = createClient(service as typeof ReflectionV1, createGrpcTransport({ baseUrl: server.baseUrl }));
  async function* input() {
    for (const r of requests) yield create(ServerReflectionRequestSchema, r);
  }
  const out = [];
  for await (const response of client.serverReflectionInfo(input())) out.push(response);
  return out;
}

describe("server reflection", () => {
  it.each([
    ["v1", ReflectionV1],
    ["v1alpha", ReflectionV1Alpha],
  ] as const)("lists and describes the services (%s)", async (_name, service) => {
    const [list, bySymbol, byMethod, byFile, missing] = await reflect(service, [
      { messageRequest: { case: "listServices", value: "" } },
      { messageRequest: { case: "fileContainingSymbol", value: "airavata.v1.GenerationService" } },
      { messageRequest: { case: "fileContainingSymbol", value: "airavata.v1.GenerationService.Generate" } },
      { messageRequest: { case: "fileByFilename", value: "airavata/v1/generation.proto" } },
      { messageRequest: { case: "fileContainingSymbol", value: "airavata.v1.Nope" } },
    ]);
    expect(list!.messageResponse.case).toBe("listServicesResponse");
    const names =
      list!.messageResponse.case === "listServicesResponse" ? list!.messageResponse.value.service.map((s) => s.name) : [];
    expect(names).toEqual(
      expect.arrayContaining([
        "airavata.v1.GenerationService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
      ]),
    );
    for (const response of [bySymbol!, byMethod!, byFile!]) {
      expect(response.messageResponse.case).toBe("fileDescriptorResponse");
      if (response.messageResponse.case !== "fileDescriptorResponse") continue;
      const file = fromBinary(FileDescriptorProtoSchema, response.messageResponse.value.fileDescriptorProto[0]!);
      expect(file.name).toBe("airavata/v1/generation.proto");
      const methods = file.service.find((s) => s.name === "GenerationService")!.method;
      expect(methods.map((m) => [m.name, m.serverStreaming])).toEqual([
        ["Generate", true],
        ["Tokenize", false],
      ]);
      const request = file.messageType.find((m) => m.name === "GenerateRequest")!;
      expect(request.field.map((f) => f.name)).toEqual(
        expect.arrayContaining([
          "prompt",
          "messages",
          "max_new_tokens",
          "temperature",
          "top_k",
          "top_p",
          "min_p",
          "repeat_penalty",
          "seed",
          "stop",
          "raw",
        ]),
      );
    }
    expect(missing!.messageResponse.case).toBe("errorResponse");
  });

  it("works for buf curl without proto files", async () => {
    const { stdout } = await exec(`${ROOT}/node_modules/.bin/buf`, [
      "curl",
      "--http2-prior-knowledge",
      "--list-methods",
      server.baseUrl,
    ]);
    expect(stdout.split("\n")).toEqual(
      expect.arrayContaining([
        "airavata.v1.GenerationService/Generate",
        "airavata.v1.GenerationService/Tokenize",
        "grpc.health.v1.Health/Check",
      ]),
    );
    const health = await exec(`${ROOT}/node_modules/.bin/buf`, [
      "curl",
      "--http2-prior-knowledge",
      "--data",
      '{"service":"airavata.v1.GenerationService"}',
      `${server.baseUrl}/grpc.health.v1.Health/Check`,
    ]);
    expect(JSON.parse(health.stdout)).toEqual({ status: "SERVING" });
  });
});

describe("health", () => {
  it("reports SERVING for the server and the generation service, NOT_FOUND for others", async () => {
    const client = createClient(Health, createGrpcTransport({ baseUrl: server.baseUrl }));
    expect((await client.check({ service: "" })).status).toBe(Status.SERVING);
    expect((await client.check({ service: "airavata.v1.GenerationService" })).status).toBe(Status.SERVING);
    await expect(client.check({ service: "nope.Service" })).rejects.toThrow(/unknown service/);
  });
});
