// Validate + render throughput of the model on a generated 1,000-VM definition
// set (issue 4: target >= 50,000 rendered configs/s). Used by `npm run bench`.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { clusterKey } from "../drivers/network";
import { hostKernel, imageId, imageRef } from "../image/busybox";
import { loadDefinitions } from "../model/load";
import { resolveClusters } from "../model/resolve";
import { renderVmConfig } from "../render/render";

const ENVIRONMENTS = 10;
const PROFILES = 10;
const CLUSTERS = 50;
const NODES = 20; // CLUSTERS * NODES = 1,000 VMs
/** Render passes are repeated until at least this long, so that the rate is not a timer artefact. */
const MIN_RENDER_SECONDS = 0.5;

/** Writes the definition set: one file per kind, plus a site policy that every cluster is checked against. */
function writeDefinitions(dir: string): number {
  const doc = (kind: string, name: string, spec: string) => `apiVersion: vse.dev/v1\nkind: ${kind}\nmetadata: { name: ${name} }\nspec:\n${spec}`;
  const envs = Array.from({ length: ENVIRONMENTS }, (_, i) =>
    doc("Environment", `env-${i}`, `  kernelArgs: [mitigations=auto]\n  job:\n    command: ["/bin/sh", "-c", "echo ${i}"]\n    env: { RANK: "${i}" }\n`),
  );
  const profiles = Array.from({ length: PROFILES }, (_, i) =>
    doc("VmProfile", `profile-${i}`, `  memory: ${256 + 64 * i}MiB\n  vcpus: ${1 + (i % 4)}\n  machine: ${["pc", "q35"][i % 2]}\n  accel: tcg\n`),
  );
  const clusters = Array.from({ length: CLUSTERS }, (_, i) =>
    doc(
      "VirtualCluster",
      `cluster-${i}`,
      `  environment: env-${i % ENVIRONMENTS}\n  profile: profile-${i % PROFILES}\n  nodes: ${NODES}\n  allocation: { manager: local, hosts: 4 }\n` +
        `  overrides:\n    - { vm: 0, memory: 2GiB, vcpus: 4 }\n`,
    ),
  );
  const policy = doc("SitePolicy", "site", `  limits: { maxMemory: 4GiB, maxVcpus: 8, maxNodesPerCluster: 64 }\n  forbiddenKernelArgs: ["init=*"]\n`);
  fs.writeFileSync(path.join(dir, "environments.yaml"), envs.join("---\n"));
  fs.writeFileSync(path.join(dir, "profiles.yaml"), profiles.join("---\n"));
  fs.writeFileSync(path.join(dir, "clusters.yaml"), clusters.join("---\n"));
  fs.writeFileSync(path.join(dir, "policy.yaml"), policy);
  return envs.length + profiles.length + clusters.length + 1;
}

export async function modelThroughput(): Promise<{
  definitions: number;
  vms: number;
  validateSeconds: number;
  renderSeconds: number;
  configsPerSecond: number;
}> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-model-bench-"));
  try {
    const definitions = writeDefinitions(dir);
    const kernel = hostKernel();

    let t0 = process.hrtime.bigint();
    const clusters = resolveClusters(loadDefinitions([dir]), { kernelRelease: () => kernel.release });
    const validateSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const vms = clusters.reduce((n, c) => n + c.vms.length, 0);

    // As planClusters renders: one image id per cluster, one config per VM (accel already resolved).
    const pass = () => {
      let bytes = 0;
      for (const c of clusters) {
        const image = imageRef(imageId(c.environment, kernel));
        const key = clusterKey("vse", "bench", c.name);
        for (const vm of c.vms)
          bytes += renderVmConfig({ cluster: c.name, clusterKey: key, vm, image, accel: "tcg", kernelArgs: c.environment.kernelArgs }).length;
      }
      return bytes;
    };
    pass(); // compiles the template and hashes the kernel once, as a long-running program would have
    let passes = 0;
    t0 = process.hrtime.bigint();
    let elapsed = 0;
    while (elapsed < MIN_RENDER_SECONDS) {
      if (pass() === 0) throw new Error("rendered empty configs");
      passes++;
      elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
    }
    const renderSeconds = elapsed / passes;
    return { definitions, vms, validateSeconds, renderSeconds, configsPerSecond: vms / renderSeconds };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
