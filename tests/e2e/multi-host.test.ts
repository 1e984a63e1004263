// examples/multi-host through the engine: a cluster over three namespace
// hosts (allocation.manager static, network private). `pulumi up` starts an
// agent in each host, the guests ping each other across the hosts; moving a
// VM to another host (its override) live-migrates it between the hosts'
// agents over TLS in `pulumi up`, its count going on there; `pulumi destroy`
// leaves no process in the hosts and no state.
// Needs root (iproute2) and the compiled provider (npx tsc -p tsconfig.json).
import * as fs from "fs";
import * as path from "path";
import type { EngineEvent } from "@pulumi/pulumi/automation";
import { PROJECT_ROOT } from "../../provider/cli/engine";
import { NetnsHosts, netnsPids } from "../../provider/allocation/netns";
import { processArgv } from "../../provider/drivers/qemu";
import { destroyLeavesNothing, useNetnsStack } from "../support/netns-stack";
import { TestStack, upAndCheckNoDiff } from "../support/stack";
import { ticks, waitForTicks } from "../support/ticks";

jest.setTimeout(15 * 60 * 1000);

// The example's hosts: this file's fixed tag and subnet; whatever a killed earlier run left under it is torn down first.
const TAG = "txe";
const SUBNET = "10.213.4.128/26";
const EXAMPLE = fs.readFileSync(path.join(PROJECT_ROOT, "examples", "multi-host", "cluster.yaml"), "utf8");
const VMS = ["multi-host-0", "multi-host-1", "multi-host-2"];
const IPS = ["10.77.0.1", "10.77.0.2", "10.77.0.3"];

const fixture = useNetnsStack({ tag: TAG, subnet: SUBNET, count: 3, definitions: { "cluster.yaml": EXAMPLE } });
let hosts: NetnsHosts;
let t: TestStack | undefined;
beforeAll(() => {
  ({ hosts, t } = fixture());
});

const netnsOf = (pid: number) => fs.readlinkSync(`/proc/${pid}/ns/net`);

test("up: three agents in three namespace hosts; the guests reach each other across the hosts", async () => {
  expect(hosts.hosts.map((h) => h.address)).toEqual(["10.213.4.130", "10.213.4.131", "10.213.4.132"]);
  const res = await upAndCheckNoDiff(t!.stack);
  const vms = res.outputs.vms.value as Record<string, { status: string; output: string; exitCode: number; pid: number }>;
  for (const [i, vm] of VMS.entries()) {
    const others = IPS.filter((_, j) => j !== i).map((p) => `${IPS[i]} reached ${p}`);
    expect([vm, vms[vm]]).toEqual([vm, expect.objectContaining({ status: "running", exitCode: 0, output: `${others.join("\n")}\n` })]);
    // Each guest's QEMU runs in its own host's namespace, its NIC bound to that host's address.
    const pid = vms[vm].pid;
    expect(processArgv(pid).join(" ")).toContain(`,localaddr=${hosts.hosts[i].address} `);
    expect((await netnsPids(hosts.hosts[i].netns)).includes(pid)).toBe(true);
  }
  expect(new Set(VMS.map((vm) => netnsOf(vms[vm].pid))).size).toBe(3);
});

test("moving a VM to another host live-migrates it between the namespace hosts in `pulumi up`; no diff after", async () => {
  const sourceConsole = path.join(t!.hostDir("multi-host", 0), "vms", "multi-host-0", "console.log");
  const targetConsole = path.join(t!.hostDir("multi-host", 1), "vms", "multi-host-0", "console.log");
  await waitForTicks(sourceConsole, 2);
  fs.writeFileSync(path.join(t!.defsDir, "cluster.yaml"), `${EXAMPLE.trimEnd()}\n  overrides: [{ vm: 0, host: 1 }]\n`);

  const ops: Record<string, string> = {};
  const preview = await t!.stack.preview({
    diff: true,
    onEvent: (e: EngineEvent) => {
      const m = e.resourcePreEvent?.metadata;
      if (m) ops[m.urn.split("::").pop()!] = m.op;
    },
  });
  // An update (a live migration), not a replace; the config's change is the NIC's host address.
  expect(ops).toMatchObject({ "multi-host-0": "update", "multi-host-1": "same", "multi-host-2": "same" });
  expect(preview.stdout).toMatch(/localaddr=10\.213\.4\.130.*\n(.*\n)*.*localaddr=10\.213\.4\.131/);

  const lastOnSource = ticks(sourceConsole).pop()!;
  const res = await upAndCheckNoDiff(t!.stack);
  const vm = (res.outputs.vms.value as Record<string, { status: string; pid: number; output: string }>)["multi-host-0"];
  expect(vm.status).toBe("running");
  // The job's output stays the one it printed on the first host: the guest was not booted again.
  expect(vm.output).toBe(`${IPS[0]} reached ${IPS[1]}\n${IPS[0]} reached ${IPS[2]}\n`);
  expect((await netnsPids(hosts.hosts[1].netns)).includes(vm.pid)).toBe(true);
  expect(processArgv(vm.pid).join(" ")).toContain(`,localaddr=${hosts.hosts[1].address} `);
  expect(processArgv(vm.pid)).toContain("defer");
  const onTarget = await waitForTicks(targetConsole, 2);
  expect(onTarget[0]).toBeGreaterThanOrEqual(lastOnSource);
  expect(fs.readFileSync(targetConsole, "utf8")).not.toContain("Linux version");
  expect(fs.existsSync(sourceConsole)).toBe(false);
});

test("destroy leaves no process in the namespace hosts and no state", async () => {
  await destroyLeavesNothing(t!, hosts, TAG);
});
