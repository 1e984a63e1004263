// Warm launch through the real engine: a cluster of a warm environment comes
// up (its first VM boots cold and leaves a snapshot); adding a VM with
// `pulumi up` restores the snapshot instead of booting. Whether a VM came up
// warm or cold is an output: the preview after each up shows no changes.
import * as fs from "fs";
import * as path from "path";
import { createTestStack, processesUnder, TestStack, upAndCheckNoDiff } from "../support/stack";

jest.setTimeout(10 * 60 * 1000);

const defs = (nodes: number) => `apiVersion: vse.dev/v1
kind: Environment
metadata: { name: warm-sum }
spec:
  warm: true
  job: { command: ["/bin/sh", "-c", "echo $((2+3)) from $(hostname)"], timeoutSeconds: 120 }
---
apiVersion: vse.dev/v1
kind: VmProfile
metadata: { name: small }
spec: { memory: 128MiB, vcpus: 1, accel: tcg }
---
apiVersion: vse.dev/v1
kind: VirtualCluster
metadata: { name: wl }
spec: { environment: warm-sum, profile: small, nodes: ${nodes}, network: private }
`;

interface VmOut {
  status: string;
  output: string | null;
  seconds: number | null;
  launch: string | null;
}

let t: TestStack;

beforeAll(async () => {
  t = await createTestStack({ "cluster.yaml": defs(1) });
  await t.stack.setConfig("vse:cacheDir", { value: path.join(t.dir, "cache") });
});

afterAll(async () => {
  await t.cleanup();
  expect(processesUnder(t.dir)).toEqual([]);
});

test("the first VM boots cold and leaves a snapshot; a VM added later comes up warm with the same result", async () => {
  await upAndCheckNoDiff(t.stack);
  let vms = (await t.stack.outputs()).vms.value as Record<string, VmOut>;
  expect(vms["wl-0"]).toEqual(expect.objectContaining({ status: "running", output: "5 from wl-0\n", launch: "cold" }));
  expect(fs.readdirSync(path.join(t.dir, "cache", "snapshots"))).toHaveLength(1);

  fs.writeFileSync(path.join(t.defsDir, "cluster.yaml"), defs(2));
  const t0 = Date.now();
  await upAndCheckNoDiff(t.stack);
  console.log(`pulumi up adding one warm VM: ${((Date.now() - t0) / 1000).toFixed(2)} s (with its no-change preview)`);
  vms = (await t.stack.outputs()).vms.value as Record<string, VmOut>;
  expect(vms["wl-1"]).toEqual(expect.objectContaining({ status: "running", output: "5 from wl-1\n", launch: "warm" }));
  // The first VM was not touched.
  expect(vms["wl-0"]).toEqual(expect.objectContaining({ output: "5 from wl-0\n", launch: "cold" }));
  expect(vms["wl-1"].seconds!).toBeLessThan(vms["wl-0"].seconds!);
  console.log(`VM requested → job output: cold ${vms["wl-0"].seconds} s, warm ${vms["wl-1"].seconds} s`);
});
