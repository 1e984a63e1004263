// The policy pack's rules (provider/policy-pack): the same code and messages as `vse validate`.
import * as fs from "fs";
import * as path from "path";
import { main } from "../../provider/cli/vse";
import { CLUSTER_TYPE, policyPackArgs, resourceViolations, sitePolicySource, VM_TYPE, vseKind } from "../../provider/policy-pack";
import { tempDir, writeFiles } from "./fixtures";

const EXAMPLE = fs.readFileSync(path.join(__dirname, "..", "..", "examples", "local-cluster", "cluster.yaml"), "utf8");
const POLICY = `apiVersion: vse.dev/v1
kind: SitePolicy
metadata: { name: small-vms }
spec:
  limits:
    maxMemory: 128MiB
    maxVmsPerAgent: 1
  forbiddenKernelArgs: ["init=*"]
`;

let dir: string;
let policyFile: string;
beforeEach(() => {
  dir = fs.realpathSync(tempDir("vse-pack-"));
  [policyFile] = writeFiles(dir, { "site-policy.yaml": POLICY, "defs/cluster.yaml": EXAMPLE });
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const env = () => ({ VSE_SITE_POLICY: policyFile });
const vmProps = (name: string, memoryMiB = 256, kernelArgs = "console=ttyS0") => ({
  vmName: name,
  hypervisor: "qemu",
  memoryMiB,
  vcpus: 1,
  kernelArgs,
  imageId: "sha256:x",
});
const facts = (vm: string, host: number, memoryMiB = 256) => ({
  vm,
  host,
  hypervisor: "qemu",
  memoryMiB,
  vcpus: 1,
  base: "busybox",
  kernelArgs: ["console=ttyS0"],
});

test("a VM's violation reads exactly as vse validate's", async () => {
  let stdout = "";
  // From an unrelated directory, so validate keeps the policy file's absolute path in its message.
  const elsewhere = tempDir("vse-pack-cwd-");
  try {
    const code = await main(["validate", path.join(dir, "defs"), "--site-policy", policyFile, "--format", "json"], {
      cwd: elsewhere,
      stdout: (t) => (stdout += t),
    });
    expect(code).toBe(1);
  } finally {
    fs.rmSync(elsewhere, { recursive: true, force: true });
  }
  const fromValidate = (JSON.parse(stdout) as { message: string }[]).map((p) => p.message);
  const fromPack = resourceViolations(VM_TYPE, vmProps("local-cluster-0"), {}, env());
  expect(fromPack).toEqual([
    `VM "local-cluster-0" has 256 MiB of memory; site policy "small-vms" rule spec.limits.maxMemory at ${policyFile}:6:5 allows at most 128 MiB per VM`,
  ]);
  expect(fromValidate).toContain(fromPack[0]);
});

test("a cluster is judged per VM and per host before its agents start", () => {
  const msgs = resourceViolations(
    CLUSTER_TYPE,
    { name: "c", stateRoot: "/s", hosts: 1, manager: "local", imageStore: "/i", vmFacts: [facts("c-0", 0, 64), facts("c-1", 0, 256)] },
    {},
    env(),
  );
  expect(msgs).toEqual([
    `VM "c-1" has 256 MiB of memory; site policy "small-vms" rule spec.limits.maxMemory at ${policyFile}:6:5 allows at most 128 MiB per VM`,
    `host 0 of the cluster would run 2 VMs; site policy "small-vms" rule spec.limits.maxVmsPerAgent at ${policyFile}:7:5 allows at most 1 VMs per node agent`,
  ]);
});

test("kernel parameters of a VM are split from its input string", () => {
  expect(resourceViolations(VM_TYPE, vmProps("v", 64, "console=ttyS0  init=/bin/sh"), {}, env())).toEqual([
    `kernel parameter "init=/bin/sh"; site policy "small-vms" rule spec.forbiddenKernelArgs.0 at ${policyFile}:8:25 forbids "init=*"`,
  ]);
});

test("compliant resources and other resource types pass", () => {
  expect(resourceViolations(VM_TYPE, vmProps("v", 128), {}, env())).toEqual([]);
  expect(resourceViolations("pulumi-nodejs:dynamic/vse:VmProfile", { spec: { memoryMiB: 4096 } }, {}, env())).toEqual([]);
});

test("untyped dynamic resources are recognised by their inputs", () => {
  expect(vseKind("pulumi-nodejs:dynamic:Resource", { __provider: "x", ...vmProps("v") })).toBe("VirtualMachine");
  expect(vseKind("pulumi-nodejs:dynamic:Resource", { stateRoot: "/s", hosts: 1, manager: "local", imageStore: "/i" })).toBe("VirtualCluster");
  expect(vseKind("pulumi-nodejs:dynamic:Resource", { spec: {} })).toBeUndefined();
});

test("which policy: VSE_SITE_POLICY, then the pack's config, then <state dir>/site-policy.yaml", () => {
  expect(sitePolicySource({ sitePolicy: "/b.yaml" }, { VSE_SITE_POLICY: "/a.yaml" }).file).toBe("/a.yaml");
  expect(sitePolicySource({ sitePolicy: "/b.yaml" }, {}).file).toBe("/b.yaml");
  expect(sitePolicySource({}, { VSE_STATE_DIR: "/st" })).toEqual({ file: undefined, stateRoot: "/st" });
  // The state dir's policy applies when it exists, and nothing is refused without one.
  fs.mkdirSync(path.join(dir, "st"));
  expect(resourceViolations(VM_TYPE, vmProps("v"), {}, { VSE_STATE_DIR: path.join(dir, "st") })).toEqual([]);
  fs.copyFileSync(policyFile, path.join(dir, "st", "site-policy.yaml"));
  expect(resourceViolations(VM_TYPE, vmProps("v"), {}, { VSE_STATE_DIR: path.join(dir, "st") })).toHaveLength(1);
});

test("an unreadable site policy is reported as a violation, naming the file", () => {
  const [msg] = resourceViolations(VM_TYPE, vmProps("v"), {}, { VSE_SITE_POLICY: path.join(dir, "nope.yaml") });
  expect(msg).toContain("the site policy cannot be read");
  expect(msg).toContain("nope.yaml");
});

test("the pack's policies are mandatory and named", () => {
  const args = policyPackArgs();
  expect(args.enforcementLevel).toBe("mandatory");
  expect(args.policies.map((p) => [p.name, p.enforcementLevel])).toEqual([
    ["vse-cluster-site-policy", "mandatory"],
    ["vse-vm-site-policy", "mandatory"],
  ]);
});
