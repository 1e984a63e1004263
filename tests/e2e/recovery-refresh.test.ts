// Recovery through the engine (issue 9): a cluster over three namespace hosts
// with `recovery: restart`. A whole host is lost (every process in its
// namespace killed at once); the survivors detect it and start its VM again on
// one of them. `pulumi refresh` then shows, per VM, where the lost host's VM
// runs now and why, and the cluster's `failures` output records the loss. The
// next `pulumi up` restarts the lost host's agent and moves the VM back to its
// declared host (a live migration: its ticks go on); no diff after; destroy
// leaves nothing.
// Needs root (iproute2), QEMU and the compiled provider (npx tsc -p tsconfig.json).
import * as fs from "fs";
import * as path from "path";
import { NetnsHosts, netnsPids } from "../../provider/allocation/netns";
import { destroyLeavesNothing, useNetnsStack } from "../support/netns-stack";
import { TestStack, upAndCheckNoDiff } from "../support/stack";
import { ticks, waitForTicks } from "../support/ticks";

jest.setTimeout(15 * 60 * 1000);

const TAG = "trr";
const SUBNET = "10.213.7.0/26";
const ADDRESSES = ["10.213.7.2", "10.213.7.3", "10.213.7.4"];
const DEFS = `apiVersion: vse.dev/v1
kind: Environment
metadata: { name: ticking }
spec:
  job:
    command: ["/bin/sh", "-c", "echo started; ( i=0; while sleep 1; do i=$((i+1)); echo tick $i; done ) &"]
    afterJob: stay-up
    timeoutSeconds: 300
---
apiVersion: vse.dev/v1
kind: VmProfile
metadata: { name: rr-small }
spec: { hypervisor: qemu, memory: 128MiB, vcpus: 1, machine: pc, accel: auto }
---
apiVersion: vse.dev/v1
kind: VirtualCluster
metadata: { name: rr }
spec:
  environment: ticking
  profile: rr-small
  nodes: 3
  recovery: restart
  allocation:
    manager: static
    hosts:
${ADDRESSES.map((a, i) => `      - { address: ${a}, netns: vse-${TAG}-h${i} }`).join("\n")}
`;

const fixture = useNetnsStack({ tag: TAG, subnet: SUBNET, count: 3, definitions: { "cluster.yaml": DEFS } });
let hosts: NetnsHosts;
let t: TestStack | undefined;
beforeAll(() => {
  ({ hosts, t } = fixture());
});

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

interface StateResource {
  type: string;
  urn: string;
  outputs?: Record<string, unknown>;
}

async function resources(): Promise<StateResource[]> {
  const state = await t!.stack.exportStack();
  return (state.deployment as { resources: StateResource[] }).resources;
}

async function vmState(name: string): Promise<Record<string, unknown>> {
  const r = (await resources()).find((x) => x.urn.endsWith(`::${name}`) && x.type.includes("VirtualMachine"));
  if (!r?.outputs) throw new Error(`no state for VM ${name}`);
  return r.outputs;
}

test("up: one VM per namespace host, each job started; no diff after", async () => {
  expect(hosts.hosts.map((h) => h.address)).toEqual(ADDRESSES);
  const res = await upAndCheckNoDiff(t!.stack);
  const vms = res.outputs.vms.value as Record<string, { status: string; output: string; pid: number }>;
  for (const [i, name] of ["rr-0", "rr-1", "rr-2"].entries()) {
    expect([name, vms[name].status, vms[name].output]).toEqual([name, "running", "started\n"]);
    expect((await netnsPids(hosts.hosts[i].netns)).includes(vms[name].pid)).toBe(true);
  }
});

test("a lost host: its VM restarted on a survivor, and `pulumi refresh` shows where and why", async () => {
  const lostPids = await netnsPids(hosts.hosts[2].netns);
  expect(lostPids.length).toBeGreaterThanOrEqual(2); // its agent and its QEMU
  for (const pid of lostPids) process.kill(pid, "SIGKILL");

  // Refresh until the record shows the restart (detection ~2 s, then a boot on a survivor).
  let vm: Record<string, unknown> = {};
  for (let i = 0; i < 30; i++) {
    await t!.stack.refresh();
    vm = await vmState("rr-2");
    if (vm.status === "running" && vm.host !== 2 && vm.jobOutput !== null) break;
    await sleep(3000);
  }
  expect(vm).toMatchObject({ status: "running", message: expect.stringMatching(/restarted on host [01]/) });
  const survivor = vm.host as number;
  expect([0, 1]).toContain(survivor);
  expect((await netnsPids(hosts.hosts[survivor].netns)).includes(vm.pid as number)).toBe(true);
  // The job ran again there (a restart is a new boot from the replicated spec).
  expect(vm.jobOutput).toBe("started\n");

  // The cluster's record: host 2, detected by survivors, the restart among the actions.
  const cluster = (await resources()).find((x) => x.type.includes("VirtualCluster"))!;
  const failures = cluster.outputs!.failures as { host: number; detectedBy: number[]; recovery: string[] }[];
  expect(failures.map((f) => f.host)).toEqual([2]);
  expect(failures[0].detectedBy.length).toBeGreaterThanOrEqual(1);
  expect(failures[0].detectedBy).not.toContain(2);
  expect(failures[0].recovery.join(" ")).toMatch(/rr-2/);
  // A second refresh still says where it runs and why.
  await t!.stack.refresh();
  expect(await vmState("rr-2")).toMatchObject({ host: survivor, message: vm.message });
  // The other VMs were not touched.
  for (const [i, name] of ["rr-0", "rr-1"].entries()) expect(await vmState(name)).toMatchObject({ status: "running", host: i });
});

test("the next up restarts the lost host's agent and moves the VM back to its declared host; no diff after", async () => {
  const before = await vmState("rr-2");
  const survivorConsole = path.join(t!.hostDir("rr", before.host as number), "vms", "rr-2", "console.log");
  await waitForTicks(survivorConsole, 2);
  const lastOnSurvivor = ticks(survivorConsole).pop()!;

  const res = await upAndCheckNoDiff(t!.stack);
  const vms = res.outputs.vms.value as Record<string, { status: string; pid: number }>;
  expect(vms["rr-2"].status).toBe("running");
  expect((await netnsPids(hosts.hosts[2].netns)).includes(vms["rr-2"].pid)).toBe(true);
  expect(await vmState("rr-2")).toMatchObject({ host: 2 });
  // Moved, not booted again: its count goes on on host 2.
  const backConsole = path.join(t!.hostDir("rr", 2), "vms", "rr-2", "console.log");
  const onBack = await waitForTicks(backConsole, 2);
  expect(onBack[0]).toBeGreaterThanOrEqual(lastOnSurvivor);
  // One QEMU per VM across the hosts.
  const qemus = (await Promise.all(hosts.hosts.map((h) => netnsPids(h.netns))))
    .flat()
    .filter((pid) => fs.existsSync(`/proc/${pid}/cmdline`) && fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").startsWith("qemu-system"));
  expect(qemus.length).toBe(3);
  // And it stays so: the restarted agent is not taken for lost, nor does it fence itself.
  await sleep(10000);
  const log = path.join(t!.hostDir("rr", 2), "agent.log");
  expect([
    (await netnsPids(hosts.hosts[2].netns)).includes(vms["rr-2"].pid),
    fs.existsSync(log) ? fs.readFileSync(log, "utf8").slice(-3000) : "no log",
  ]).toEqual([true, expect.anything()]);
  await upAndCheckNoDiff(t!.stack);
});

test("destroy leaves no process in the namespace hosts and no state", async () => {
  await destroyLeavesNothing(t!, hosts, TAG);
});
