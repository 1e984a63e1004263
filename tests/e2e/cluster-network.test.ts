// `network: private` through `pulumi up`: the cluster's VMs get NICs on their
// own network and reach each other; nothing outside is routable from them.
import * as fs from "fs";
import * as path from "path";
import { PROJECT_ROOT } from "../../provider/cli/engine";
import { processArgv } from "../../provider/drivers/qemu";
import { isLocalUnicastMac } from "../../provider/drivers/network";
import { createTestStack, TestStack, upAndCheckNoDiff } from "../support/stack";

jest.setTimeout(10 * 60 * 1000);

let t: TestStack;

beforeAll(async () => {
  t = await createTestStack({ "cluster.yaml": fs.readFileSync(path.join(PROJECT_ROOT, "examples", "cluster-network", "cluster.yaml"), "utf8") });
});

afterAll(async () => {
  if (t) await t.cleanup();
});

test("two VMs of a cluster with a private network ping each other and have no route out", async () => {
  const res = await upAndCheckNoDiff(t.stack);
  const vms = res.outputs.vms.value as Record<string, { output: string; exitCode: number; pid: number }>;
  expect(vms["net-cluster-0"]).toEqual(expect.objectContaining({ exitCode: 0, output: "no route outside the cluster\n10.77.0.1 reached 10.77.0.2\n" }));
  expect(vms["net-cluster-1"]).toEqual(expect.objectContaining({ exitCode: 0, output: "no route outside the cluster\n10.77.0.2 reached 10.77.0.1\n" }));
  // Each NIC has a distinct, locally administered MAC, on the same multicast group bound to loopback.
  const macs = ["net-cluster-0", "net-cluster-1"].map((vm) => /mac=([0-9a-f:]+)/.exec(processArgv(vms[vm].pid).join(" "))![1]);
  expect(new Set(macs).size).toBe(2);
  for (const mac of macs) expect(isLocalUnicastMac(mac)).toBe(true);
  for (const vm of ["net-cluster-0", "net-cluster-1"])
    expect(processArgv(vms[vm].pid).join(" ")).toMatch(/-netdev socket,id=vse0,mcast=239\.255\.\d+\.\d+:\d+,localaddr=127\.0\.0\.1/);
});

test("preview after up reports no changes", async () => {
  const res = await t.stack.preview();
  expect(Object.keys(res.changeSummary ?? {})).toEqual(["same"]);
});
