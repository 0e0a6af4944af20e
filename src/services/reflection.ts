/**
 * gRPC server reflection (grpc.reflection.v1 and v1alpha), built from the
 * descriptors protobuf-es embeds in the generated code, so grpcurl, ghz and
 * buf curl work without the .proto files. Files are answered together with
 * their dependencies to save clients round trips.
 */
import { type DescFile, type DescService, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { nestedTypes } from "@bufbuild/protobuf/reflect";
import { Code, type ServiceImpl } from "@connectrpc/connect";
import {
  ServerReflection as ServerReflectionV1,
  type ServerReflectionRequest as RequestV1,
} from "../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1Alpha } from "../gen/grpc/reflection/v1alpha/reflection_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ServerReflectionResponseSchema } from "../gen/grpc/reflection/v1/reflection_pb.js";

type Response = MessageInitShape<typeof ServerReflectionResponseSchema>;

/** Every file the services need, by file name, and the file of every symbol. */
class DescriptorIndex {
  readonly files = new Map<string, DescFile>();
  readonly symbols = new Map<string, DescFile>();

  constructor(services: readonly DescService[]) {
    for (const service of services) this.addFile(service.file);
  }

  private addFile(file: DescFile): void {
    const name = file.proto.name;
    if (this.files.has(name)) return;
    this.files.set(name, file);
    for (const type of nestedTypes(file)) {
      this.symbols.set(type.typeName, file);
      if (type.kind === "service") for (const method of type.methods) this.symbols.set(`${type.typeName}.${method.name}`, file);
      if (type.kind === "message") for (const field of type.fields) this.symbols.set(`${type.typeName}.${field.name}`, file);
      if (type.kind === "enum") for (const value of type.values) this.symbols.set(`${type.typeName}.${value.name}`, file);
    }
    for (const dependency of file.dependencies) this.addFile(dependency);
  }

  /** A file and everything it imports, serialized, the file first. */
  withDependencies(file: DescFile): Uint8Array[] {
    const seen = new Set<string>();
    const out: Uint8Array[] = [];
    const visit = (f: DescFile) => {
      if (seen.has(f.proto.name)) return;
      seen.add(f.proto.name);
      out.push(toBinary(FileDescriptorProtoSchema, f.proto));
      for (const d of f.dependencies) visit(d);
    };
    visit(file);
    return out;
  }
}

function answer(index: DescriptorIndex, serviceNames: readonly string[], req: RequestV1): Response {
  const base = { validHost: req.host, originalRequest: req };
  const notFound = (message: string): Response => ({
    ...base,
    messageResponse: { case: "errorResponse", value: { errorCode: Code.NotFound, errorMessage: message } },
  });
  const files = (file: DescFile): Response => ({
    ...base,
    messageResponse: { case: "fileDescriptorResponse", value: { fileDescriptorProto: index.withDependencies(file) } },
  });
  const request = req.messageRequest;
  switch (request.case) {
    case "listServices":
      return {
        ...base,
        messageResponse: { case: "listServicesResponse", value: { service: serviceNames.map((name) => ({ name })) } },
      };
    case "fileByFilename": {
      const file = index.files.get(request.value);
      return file ? files(file) : notFound(`file "${request.value}" not found`);
    }
    case "fileContainingSymbol": {
      const file = index.symbols.get(request.value.replace(/^\./, ""));
      return file ? files(file) : notFound(`symbol "${request.value}" not found`);
    }
    case "fileContainingExtension":
      return notFound(`extension ${request.value.extensionNumber} of "${request.value.containingType}" not found`);
    case "allExtensionNumbersOfType": {
      const known = index.symbols.has(request.value);
      return known
        ? {
            ...base,
            messageResponse: { case: "allExtensionNumbersResponse", value: { baseTypeName: request.value, extensionNumber: [] } },
          }
        : notFound(`type "${request.value}" not found`);
    }
    default:
      return {
        ...base,
        messageResponse: {
          case: "errorResponse",
          value: { errorCode: Code.InvalidArgument, errorMessage: "empty reflection request" },
        },
      };
  }
}

/** Reflection for `services` (and the reflection services themselves), v1 and v1alpha. */
export function createReflectionServices(services: readonly DescService[]): {
  v1: ServiceImpl<typeof ServerReflectionV1>;
  v1alpha: ServiceImpl<typeof ServerReflectionV1Alpha>;
} {
  const all = [...services, ServerReflectionV1, ServerReflectionV1Alpha];
  const index = new DescriptorIndex(all);
  const names = all.map((s) => s.typeName);
  async function* serve(requests: AsyncIterable<RequestV1>): AsyncGenerator<Response> {
    for await (const req of requests) yield answer(index, names, req);
  }
  return {
    v1: { serverReflectionInfo: serve },
    // v1alpha's messages have the same fields and numbers as v1's.
    v1alpha: { serverReflectionInfo: serve as unknown as ServiceImpl<typeof ServerReflectionV1Alpha>["serverReflectionInfo"] },
  };
}
