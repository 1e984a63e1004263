// Warm launch across hosts of their own, through the engine: `vse warm` makes
// the snapshot on the controller; `pulumi up` of a static cluster over two
// namespace hosts stages it with the image into each host's store (its key is
// the cluster's input snapshotKeys, so the preview shows it), and the first VM
// on each host restores it instead of booting. Then spec.warmAhead and another
// profile: the Environment makes the new snapshot in the same up, the cluster
// stages it, and the restarted VMs restore it. No diff after; destroy leaves
// nothing.
// Needs root (iproute2) and the compiled provider (npx tsc -p tsconfig.json).
import * as fs from "fs";
import * as path from "path";
import { snapshotRootOf } from "../../provider/agent/image-store";
import { main as vse } from "../../provider/cli/vse";
import { PROJECT_ROOT } from "../../provider/cli/engine";
import { NetnsHosts } from "../../provider/allocation/netns";
import { destroyLeavesNothing, useNetnsStack } from "../support/netns-stack";
import { TestStack, upAndCheckNoDiff } from "../support/stack";

jest.setTimeout(15 * 60 * 1000);

const TAG = "twst";
const SUBNET = "10.213.8.0/26";
const defs = (o: { ahead: boolean; memory: string }) => `apiVersion: vse.dev/v1
kind: Environment
metadata: { name: warm-hosts }
spec:
  warm: true
  warmAhead: ${o.ahead}
  job: { command: ["/bin/sh", "-c", "echo staged $((40+2)) on $(hostname)"], afterJob: stay-up, timeoutSeconds: 300 }
---
apiVersion: vse.dev/v1
kind: VmProfile
metadata: { name: warm-small }
spec: { hypervisor: qemu, memory: ${o.memory}, vcpus: 1, machine: pc, accel: tcg }
---
apiVersion: vse.dev/v1
kind: VirtualCluster
metadata: { name: warm-hosts }
spec:
  environment: warm-hosts
  profile: warm-small
  nodes: 2
  allocation:
    manager: static
    hosts:
      - { address: 10.213.8.2, netns: vse-${TAG}-h0 }
      - { address: 10.213.8.3, netns: vse-${TAG}-h1 }
`;

const fixture = useNetnsStack({ tag: TAG, subnet: SUBNET, count: 2, definitions: { "cluster.yaml": defs({ ahead: false, memory: "128MiB" }) } });
let hosts: NetnsHosts;
let t: TestStack | undefined;
let cacheDir: string;
beforeAll(async () => {
  ({ hosts, t } = fixture());
  // A cache of its own: a snapshot of the shared cache would make other tests' first VMs warm.
  cacheDir = path.join(t!.dir, "cache");
  await t!.stack.setConfig("vse:cacheDir", { value: cacheDir });
});

test("the controller's snapshot is staged to both hosts with the image, and each host's first VM restores it", async () => {
  expect(hosts.hosts.map((h) => h.address)).toEqual(["10.213.8.2", "10.213.8.3"]);
  let out = "";
  const io = { stdout: (s: string) => (out += s), stderr: (s: string) => (out += s), cwd: PROJECT_ROOT };
  expect(await vse(["warm", t!.defsDir, "--stack", t!.name, "--cache-dir", cacheDir], io)).toBe(0);
  const key = /snapshot ([0-9a-f]{12})/.exec(out)?.[1];
  expect(key).toBeDefined();
  const full = fs.readdirSync(path.join(cacheDir, "snapshots")).find((k) => k.startsWith(key!))!;

  const res = await upAndCheckNoDiff(t!.stack);
  const vms = res.outputs.vms.value as Record<string, { status: string; output: string; launch: string }>;
  for (const i of [0, 1]) expect(vms[`warm-hosts-${i}`]).toMatchObject({ status: "running", output: `staged 42 on warm-hosts-${i}\n`, launch: "warm" });
  // In each host's own store, beside its images: the controller's snapshot, and no other made there.
  for (const i of [0, 1]) {
    const store = path.join(t!.hostDir("warm-hosts", i), "images");
    expect(fs.readdirSync(snapshotRootOf(store))).toEqual([full]);
  }
});

test("warmAhead: another profile's snapshot is made by the Environment in the up that needs it, staged, and restored on both hosts", async () => {
  const before = fs.readdirSync(path.join(cacheDir, "snapshots"));
  fs.writeFileSync(path.join(t!.defsDir, "cluster.yaml"), defs({ ahead: true, memory: "160MiB" }));
  const res = await upAndCheckNoDiff(t!.stack);
  const vms = res.outputs.vms.value as Record<string, { status: string; output: string; launch: string }>;
  for (const i of [0, 1]) expect(vms[`warm-hosts-${i}`]).toMatchObject({ status: "running", output: `staged 42 on warm-hosts-${i}\n`, launch: "warm" });
  const made = fs.readdirSync(path.join(cacheDir, "snapshots")).filter((k) => !before.includes(k));
  expect(made).toHaveLength(1);
  for (const i of [0, 1]) {
    const store = path.join(t!.hostDir("warm-hosts", i), "images");
    expect(fs.readdirSync(snapshotRootOf(store)).sort()).toEqual([...before, ...made].sort());
  }
});

test("destroy leaves no process in the namespace hosts and no state", async () => {
  await destroyLeavesNothing(t!, hosts, TAG);
});
