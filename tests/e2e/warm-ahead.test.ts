// Snapshots made ahead by the Environment resource (spec.warmAhead), through
// the engine: the first `pulumi up` makes the snapshot before any VM starts,
// so even the first VMs come up warm; a changed profile is another snapshot,
// which the Environment's update makes before the new VMs restore it. The
// preview after each up shows no changes.
import * as fs from "fs";
import * as path from "path";
import { createTestStack, processesUnder, TestStack, upAndCheckNoDiff } from "../support/stack";

jest.setTimeout(10 * 60 * 1000);

const defs = (memory: string) => `apiVersion: vse.dev/v1
kind: Environment
metadata: { name: ahead }
spec:
  warm: true
  warmAhead: true
  job: { command: ["/bin/sh", "-c", "echo ahead $((40+2)) on $(hostname)"], afterJob: stay-up, timeoutSeconds: 300 }
---
apiVersion: vse.dev/v1
kind: VmProfile
metadata: { name: small }
spec: { memory: ${memory}, vcpus: 1, accel: tcg }
---
apiVersion: vse.dev/v1
kind: VirtualCluster
metadata: { name: ah }
spec: { environment: ahead, profile: small, nodes: 2 }
`;

let t: TestStack;
let cacheDir: string;
beforeAll(async () => {
  t = await createTestStack({ "cluster.yaml": defs("128MiB") });
  // A cache of its own, so that no other test's snapshot is found here (nor this one's there).
  cacheDir = path.join(t.dir, "cache");
  await t.stack.setConfig("vse:cacheDir", { value: cacheDir });
});
afterAll(async () => {
  await t?.cleanup();
});

const snapshots = () => (fs.existsSync(path.join(cacheDir, "snapshots")) ? fs.readdirSync(path.join(cacheDir, "snapshots")).sort() : []);
type Vms = Record<string, { status: string; output: string; launch: string }>;

test("the first up makes the snapshot before any VM starts: every VM comes up warm, none boots cold", async () => {
  const res = await upAndCheckNoDiff(t.stack);
  const vms = res.outputs.vms.value as Vms;
  for (const i of [0, 1]) expect(vms[`ah-${i}`]).toMatchObject({ status: "running", output: `ahead 42 on ah-${i}\n`, launch: "warm" });
  expect(snapshots()).toHaveLength(1);
});

test("another profile is another snapshot: the Environment's update makes it, and the replaced VMs restore it", async () => {
  const before = snapshots();
  fs.writeFileSync(path.join(t.defsDir, "cluster.yaml"), defs("160MiB"));
  const res = await upAndCheckNoDiff(t.stack);
  const vms = res.outputs.vms.value as Vms;
  for (const i of [0, 1]) expect(vms[`ah-${i}`]).toMatchObject({ status: "running", output: `ahead 42 on ah-${i}\n`, launch: "warm" });
  const after = snapshots();
  expect(after).toHaveLength(2);
  expect(after).toEqual(expect.arrayContaining(before));
});

test("destroy leaves no process behind", async () => {
  await t.stack.destroy();
  expect(processesUnder(t.dir)).toEqual([]);
});
