// The library (provider/index.ts) and the YAML program (provider/program) must
// declare the same VMs for the same definitions: here the library runs under
// Pulumi's mocks and its VirtualMachine inputs are compared with what
// provider/program/plan.ts (planClusters + vmInputs) produces from YAML.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as pulumi from "@pulumi/pulumi";

const PROJECT = "vse";
const STACK = "lib-test";
const agentUrl = (host: number) => `http://127.0.0.1:${7000 + host}`;
const TOKEN = "token-of-the-cluster";

const declared: pulumi.runtime.MockResourceArgs[] = [];
pulumi.runtime.setMocks(
  {
    newResource(args) {
      declared.push(args);
      const state = { ...args.inputs };
      // A VirtualCluster's outputs: one agent per host and the cluster's token.
      if (typeof args.inputs.hosts === "number" && args.inputs.stateRoot) {
        state.agents = Array.from({ length: args.inputs.hosts }, (_, h) => ({ url: agentUrl(h), healthy: true }));
        state.token = TOKEN;
        state.ca = null;
        state.allocationRef = null;
      }
      return { id: `${args.name}-id`, state };
    },
    call: (args) => args.inputs,
  },
  PROJECT,
  STACK,
  false,
);

// Required after setMocks, so that the library's resources see the mocked runtime.
const lib = require("../../provider/index") as typeof import("../../provider/index");
const plan = require("../../provider/program/plan") as typeof import("../../provider/program/plan");

const DEFINITIONS = `
apiVersion: vse.dev/v1
kind: Environment
metadata: { name: lib-sum }
spec:
  base: busybox
  kernelArgs: ["loglevel=3"]
  job: { command: ["/bin/sh", "-c", "echo $((2+3))"], afterJob: power-off, timeoutSeconds: 90 }
---
apiVersion: vse.dev/v1
kind: VmProfile
metadata: { name: lib-small }
spec: { hypervisor: qemu, memory: 256MiB, vcpus: 1, machine: pc, accel: tcg }
---
apiVersion: vse.dev/v1
kind: VirtualCluster
metadata: { name: lib-net }
spec:
  environment: lib-sum
  profile: lib-small
  nodes: 3
  allocation: { manager: local, hosts: 2 }
  overrides: [{ vm: 1, memory: 384MiB, vcpus: 2 }]
  network: private
---
apiVersion: vse.dev/v1
kind: VirtualCluster
metadata: { name: lib-plain }
spec:
  environment: lib-sum
  profile: lib-small
  nodes: 1
`;

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-lib-"));
  fs.writeFileSync(path.join(dir, "clusters.yaml"), DEFINITIONS);
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** The library's declaration of the same definitions; resolves once every VM is registered. */
async function declareWithLibrary(cacheDir: string, stateRoot: string) {
  const environment = new lib.Environment("lib-sum", {
    spec: { base: "busybox", kernelArgs: ["loglevel=3"], job: { command: ["/bin/sh", "-c", "echo $((2+3))"], afterJob: "power-off", timeoutSeconds: 90 } },
    cacheDir,
  });
  const profile = new lib.VmProfile("lib-small", { spec: { hypervisor: "qemu", memory: "256MiB", vcpus: 1, machine: "pc", accel: "tcg" } });
  const clusters = [
    new lib.VirtualCluster("lib-net", {
      environment,
      profile,
      nodes: 3,
      allocation: { manager: "local", hosts: 2 },
      overrides: [{ vm: 1, memory: "384MiB", vcpus: 2 }],
      network: "private",
      stateRoot,
    }),
    new lib.VirtualCluster("lib-plain", { environment, profile, nodes: 1, stateRoot }),
  ];
  const vms = clusters.flatMap((c) => c.vms);
  await new Promise((resolve) => pulumi.all(vms.map((vm) => vm.urn)).apply(resolve));
  return clusters;
}

test("the library declares the same VM inputs as the YAML program, network included", async () => {
  const cacheDir = path.join(dir, "cache");
  const clusters = await declareWithLibrary(cacheDir, path.join(dir, "state"));
  expect(clusters[0].model.network).toBe("private");

  const plans = await plan.planClusters([dir], cacheDir, { resolveAccel: async (a) => (a === "auto" ? "tcg" : a), project: PROJECT, stack: STACK });
  const expected = plans.flatMap((p) =>
    p.vms.map((v) => plan.vmInputs(p.model, v, { agentUrl: agentUrl(v.vm.host), token: TOKEN, agentCa: null, allocationRef: null })),
  );
  expect(expected.map((e) => e.vmName).sort()).toEqual(["lib-net-0", "lib-net-1", "lib-net-2", "lib-plain-0"]);

  for (const want of expected) {
    const vm = declared.find((r) => r.inputs.vmName === want.vmName);
    expect(vm).toBeDefined();
    const got = Object.fromEntries(Object.keys(want).map((k) => [k, vm!.inputs[k]]));
    expect({ vm: want.vmName, ...got }).toEqual({ vm: want.vmName, ...want });
  }
  // The networked cluster boots the image with the network's extras, declared once, as the YAML program's "<environment>+network".
  const netPlan = plans.find((p) => p.model.name === "lib-net")!;
  expect(netPlan.extras).toBeDefined();
  const images = declared.filter((r) => r.inputs.imageId !== undefined && r.inputs.vmName === undefined);
  expect(images.map((r) => [r.name, r.inputs.imageId, r.inputs.extras ?? null]).sort()).toEqual(
    [
      ["lib-sum", plans.find((p) => p.model.name === "lib-plain")!.imageId, null],
      ["lib-sum+network", netPlan.imageId, netPlan.extras],
    ].sort(),
  );
});
