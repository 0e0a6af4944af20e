/**
 * The Kubernetes manifests in deploy/k8s, validated offline: core and apps
 * objects against their schemas (kubernetes-models), the InferencePool
 * against the Inference Extension's own CRD schema (../shared/k8s-crds, by
 * Ajv); and the Dockerfile parsed. Each check is shown to fail on a broken copy.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Ajv } from "ajv";
import { DockerfileParser } from "dockerfile-ast";
import { Deployment } from "kubernetes-models/apps/v1";
import { HorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2";
import { PersistentVolumeClaim, Service } from "kubernetes-models/v1";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1";
import { describe, expect, it } from "vitest";
import { parseAllDocuments, parse } from "yaml";

const DEPLOY = fileURLToPath(new URL("../../deploy/", import.meta.url));
/**
 * The Inference Extension's CRD, as the workplace keeps it beside the checkout (`../shared/k8s-crds`,
 * with its source and commit); AIRAVATA_K8S_CRDS names another folder.
 */
const CRDS = process.env.AIRAVATA_K8S_CRDS ?? fileURLToPath(new URL("../../../shared/k8s-crds/", import.meta.url));
const CRD = join(CRDS, "inference.networking.k8s.io_inferencepools.yaml");
if (!existsSync(CRD)) {
  throw new Error(
    `the InferencePool CRD is not at ${CRD}: keep ../shared/k8s-crds beside the checkout, or set AIRAVATA_K8S_CRDS`,
  );
}

type Manifest = { apiVersion: string; kind: string; metadata: { name: string } } & Record<string, unknown>;

function manifests(): Manifest[] {
  return readdirSync(join(DEPLOY, "k8s"))
    .filter((f) => f.endsWith(".yaml"))
    .flatMap((f) => parseAllDocuments(readFileSync(join(DEPLOY, "k8s", f), "utf8")).map((d) => d.toJS() as Manifest));
}

const inferencePoolSchema = () => {
  const crd = parse(readFileSync(CRD, "utf8")) as {
    spec: { versions: { name: string; schema: { openAPIV3Schema: object } }[] };
  };
  const v1 = crd.spec.versions.find((v) => v.name === "v1")!;
  // The CRD's schema uses Kubernetes' own keywords (x-kubernetes-*): allowed, not enforced.
  return new Ajv({ strict: false, allErrors: true }).compile(v1.schema.openAPIV3Schema);
};

/** Throws unless `m` is valid for its kind. */
function validate(m: Manifest): void {
  const models: Record<string, { new (data: never): { validate(): void } }> = {
    "apps/v1 Deployment": Deployment as never,
    "v1 Service": Service as never,
    "v1 PersistentVolumeClaim": PersistentVolumeClaim as never,
    "policy/v1 PodDisruptionBudget": PodDisruptionBudget as never,
    "autoscaling/v2 HorizontalPodAutoscaler": HorizontalPodAutoscaler as never,
  };
  const key = `${m.apiVersion} ${m.kind}`;
  if (key === "inference.networking.k8s.io/v1 InferencePool") {
    const check = inferencePoolSchema();
    const name = m.metadata.name;
    if (!check(structuredClone(m))) throw new Error(`InferencePool ${name}: ${JSON.stringify(check.errors)}`);
    return;
  }
  const Model = models[key];
  if (!Model) throw new Error(`no schema here for ${key}`);
  new Model(m as never).validate();
}

describe("deploy/k8s", () => {
  it("every manifest validates, and the set is what a deployment needs", () => {
    const all = manifests();
    for (const m of all) expect(() => validate(m), `${m.kind} ${m.metadata.name}`).not.toThrow();
    expect(all.map((m) => `${m.kind}/${m.metadata.name}`).sort()).toEqual(
      [
        "Deployment/airavata-epp",
        "Deployment/airavata-serve",
        "HorizontalPodAutoscaler/airavata-serve",
        "InferencePool/airavata",
        "PersistentVolumeClaim/airavata-models",
        "PodDisruptionBudget/airavata-serve",
        "Service/airavata-epp",
        "Service/airavata-serve",
        "Service/airavata-serve-headless",
      ].sort(),
    );
    const serve = all.find((m) => m.kind === "Deployment" && m.metadata.name === "airavata-serve") as unknown as {
      spec: { template: { spec: { terminationGracePeriodSeconds: number; containers: Record<string, unknown>[] } } };
    };
    const pod = serve.spec.template.spec;
    const container = pod.containers[0] as { args: string[]; readinessProbe: { grpc: { port: number } } };
    // The kubelet waits longer than the service's own grace period.
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(
      Number(container.args[container.args.indexOf("--grace-period") + 1]),
    );
    expect(container.readinessProbe.grpc.port).toBe(50051);
  });

  it("a broken manifest fails: a wrong type in a Deployment, an InferencePool without its ports", () => {
    const all = manifests();
    const deployment = structuredClone(all.find((m) => m.kind === "Deployment")!) as Manifest & { spec: { replicas: unknown } };
    deployment.spec.replicas = "two";
    expect(() => validate(deployment)).toThrow();
    const pool = structuredClone(all.find((m) => m.kind === "InferencePool")!) as Manifest & { spec: Record<string, unknown> };
    delete pool.spec.targetPorts;
    expect(() => validate(pool)).toThrow(/targetPorts/);
  });
});

describe("deploy/Dockerfile", () => {
  it("parses: a CUDA runtime base, production dependencies only, a non-root user, the models folder a volume, the thread pool built", () => {
    const file = DockerfileParser.parse(readFileSync(join(DEPLOY, "Dockerfile"), "utf8"));
    const instructions = file.getInstructions().map((i) => [i.getKeyword(), i.getArgumentsContent() ?? ""] as const);
    const froms = instructions.filter(([k]) => k === "FROM").map(([, a]) => a);
    expect(froms.at(-1)).toMatch(/^nvidia\/cuda:[\d.]+-runtime-/);
    expect(instructions.some(([k, a]) => k === "RUN" && a.includes("npm ci --omit=dev"))).toBe(true);
    expect(instructions.filter(([k]) => k === "USER").at(-1)?.[1]).toBe("10001");
    expect(instructions.some(([k, a]) => k === "VOLUME" && a === "/models")).toBe(true);
    expect(instructions.some(([k, a]) => k === "EXPOSE" && a === "50051")).toBe(true);
    // The runtime image has no C compiler: the engine's thread pool library is built in the first stage and taken along.
    expect(instructions.some(([k, a]) => k === "RUN" && a.includes("npm run build:thread-pool"))).toBe(true);
    expect(instructions.some(([k, a]) => k === "COPY" && a === "/thread-pool /app/.tools")).toBe(true);
    expect(instructions.some(([k, a]) => k === "COPY" && a === "native ./native")).toBe(true);
  });
});
