// The VirtualCluster provider through its allocators, against real agents:
// `local` (unix sockets on this machine) and `static` (hosts declared by
// address: here two namespace hosts, agents over HTTPS with the cluster's CA).
// create → read → an agent killed → read finds it → update restarts it on its
// state (its VM is re-attached, same QEMU) → delete leaves nothing. The VM is
// driven through the VirtualMachine provider with the cluster's CA pinned.
// Needs root (iproute2) and the compiled agent (npx tsc -p tsconfig.json).
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { agentClient } from "../../provider/allocation/allocator";
import { netnsLeftovers, netnsPids, NetnsHosts, setUpNetnsHosts, tearDownNetnsHosts } from "../../provider/allocation/netns";
import { clusterKey } from "../../provider/drivers/network";
import {
  clusterCreate,
  clusterDelete,
  clusterDiff,
  clusterRead,
  clusterUpdate,
  VirtualClusterInputs,
  VirtualClusterOutputs,
} from "../../provider/resources/virtual-cluster";
import { vmCreate, VirtualMachineInputs, VirtualMachineOutputs, vmRead } from "../../provider/resources/virtual-machine";
import { vmSpec } from "../support/agent";
import { processesUnder, qemuProcessesFor } from "../support/stack";
import { testVmInputs } from "../support/vm-inputs";

jest.setTimeout(6 * 60 * 1000);

const TAG = "tvc";
const SUBNET = "10.213.6.0/26";
let dir: string;
let hosts: NetnsHosts;

beforeAll(async () => {
  await tearDownNetnsHosts(TAG);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-vc-"));
  hosts = await setUpNetnsHosts({ tag: TAG, count: 2, subnet: SUBNET });
});

afterAll(async () => {
  try {
    await tearDownNetnsHosts(TAG);
    expect(await netnsLeftovers(TAG)).toEqual({ netns: [], links: [] });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function clusterInputs(name: string, allocation: VirtualClusterInputs["allocation"]): VirtualClusterInputs {
  return {
    name,
    stateRoot: path.join(dir, "state"),
    project: "test",
    stack: path.basename(dir),
    manager: allocation!.manager,
    hosts: allocation!.hosts,
    allocation,
    imageStore: path.join(dir, "cache", "images"),
    sitePolicyFile: null,
  };
}

/** The VM's spec (its image built into the controller's store on the way). */
function specFor(inputs: VirtualClusterInputs, vm: string) {
  return vmSpec({ key: clusterKey(inputs.project, inputs.stack, inputs.name), cacheDir: path.join(dir, "cache") }, vm);
}

function vmInputsOn(c: VirtualClusterOutputs, vm: string, host: number): VirtualMachineInputs {
  return testVmInputs(specFor(c, vm), {
    cluster: c.name,
    vmName: vm,
    host,
    agentUrl: c.agents[host].url,
    token: c.token,
    agentCa: c.ca,
    allocationRef: c.allocationRef,
    jobTimeoutSeconds: 120,
  });
}

/** The cluster's life as `pulumi up`, refresh and destroy drive it, with one agent killed on the way. */
async function lifecycle(inputs: VirtualClusterInputs, expectUrl: (host: number) => string | RegExp): Promise<void> {
  const imageId = /image:([0-9a-f]{64})\//.exec(specFor(inputs, `${inputs.name}-0`).config)![1];
  // Declared hosts keep their own image stores: the cluster stages its VMs' image to them.
  if (inputs.manager === "static") inputs = { ...inputs, imageIds: [imageId] };
  const created = (await clusterCreate(inputs)).outs as VirtualClusterOutputs;
  const clusterDir = path.join(inputs.stateRoot, "clusters", `${inputs.name}-${created.clusterKey}`);
  try {
    expect(created.agents.map((a) => a.host)).toEqual([0, 1]);
    created.agents.forEach((a, h) => expect(a.url).toMatch(expectUrl(h)));
    expect(created.clusterKey).toBe(clusterKey(inputs.project, inputs.stack, inputs.name));
    if (inputs.manager === "static") for (const a of created.agents) expect(fs.existsSync(path.join(a.stateDir, "images", imageId, "initrd.img"))).toBe(true);

    // A VM through the VM provider, with the cluster's CA where the agents serve HTTPS.
    const vmIn = vmInputsOn(created, `${inputs.name}-0`, 1);
    const vm = (await vmCreate(vmIn)).outs as VirtualMachineOutputs;
    expect(vm).toMatchObject({ status: "running", jobOutput: "job-42\n", jobExitCode: 0 });

    const read = (await clusterRead("id", created)).props as VirtualClusterOutputs;
    expect(read.agents.map((a) => a.healthy)).toEqual([true, true]);
    expect(await clusterDiff(read, inputs)).toMatchObject({ changes: false, replaces: [] });

    // Host 1's agent dies; refresh sees it, the next update restarts it on its state and it re-attaches to the VM.
    process.kill(created.agents[1].pid, "SIGKILL");
    await new Promise((r) => setTimeout(r, 300));
    const dead = (await clusterRead("id", read)).props as VirtualClusterOutputs;
    expect(dead.agents.map((a) => a.healthy)).toEqual([true, false]);
    expect(await clusterDiff(dead, inputs)).toMatchObject({ changes: true, replaces: [] });
    const { outs } = await clusterUpdate(dead, inputs);
    const updated = outs as VirtualClusterOutputs;
    expect(updated.agents.map((a) => a.healthy)).toEqual([true, true]);
    expect(updated.agents[1].pid).not.toBe(created.agents[1].pid);
    expect(updated.agents[1].url).toBe(created.agents[1].url);
    const again = (await vmRead("id", { ...vm, agentUrl: updated.agents[1].url })).props as VirtualMachineOutputs;
    expect(again).toMatchObject({ status: "running", pid: vm.pid });

    await clusterDelete(updated);
    expect(fs.existsSync(clusterDir)).toBe(false);
    expect(processesUnder(clusterDir)).toEqual([]);
    expect(qemuProcessesFor(dir, vmIn.vmName)).toEqual([]);
  } catch (err) {
    await clusterDelete({ ...created, agents: created.agents }).catch(() => undefined);
    throw err;
  }
}

test("local: two agents on unix sockets; an agent killed is found by read and restarted by update, its VM kept", async () => {
  await lifecycle(clusterInputs("loc", { manager: "local", hosts: 2 }), () => /^unix:\/.+\/agent\.sock$/);
});

test("static: two declared hosts (namespace hosts), agents over HTTPS on their addresses, the VM driven with the CA pinned", async () => {
  const allocation = { manager: "static" as const, hosts: 2, hostList: hosts.hosts.map((h) => ({ address: h.address, netns: h.netns })), port: 7443 };
  await lifecycle(clusterInputs("sta", allocation), (h) => `https://${hosts.hosts[h].address}:7443`);
  for (const h of hosts.hosts) expect(await netnsPids(h.netns)).toEqual([]);
});

test("static: a change of a declared address replaces the cluster; the same hosts do not", async () => {
  const list = hosts.hosts.map((h) => ({ address: h.address, netns: h.netns }));
  const olds = { ...clusterInputs("sta", { manager: "static", hosts: 2, hostList: list, port: 7443 }) } as VirtualClusterOutputs;
  expect(await clusterDiff({ ...olds, agents: [] }, clusterInputs("sta", { manager: "static", hosts: 2, hostList: list, port: 7443 }))).toMatchObject({
    changes: false,
  });
  const moved = [list[0], { ...list[1], address: "10.213.6.60" }];
  expect(await clusterDiff({ ...olds, agents: [] }, clusterInputs("sta", { manager: "static", hosts: 2, hostList: moved, port: 7443 }))).toMatchObject({
    changes: true,
    replaces: ["allocation"],
  });
});

test("static: a new warm-launch snapshot in the controller's store is an update (staged to the hosts), never a replace; local clusters ignore it", async () => {
  const list = hosts.hosts.map((h) => ({ address: h.address, netns: h.netns }));
  const news = clusterInputs("sta", { manager: "static", hosts: 2, hostList: list, port: 7443 });
  const olds = { ...news, agents: [] } as unknown as VirtualClusterOutputs;
  expect(await clusterDiff(olds, { ...news, snapshotKeys: ["a".repeat(64)] })).toEqual({ changes: true, replaces: [], deleteBeforeReplace: true });
  expect(await clusterDiff({ ...olds, snapshotKeys: ["a".repeat(64)] }, { ...news, snapshotKeys: ["a".repeat(64)] })).toMatchObject({ changes: false });
  const local = clusterInputs("loc", { manager: "local", hosts: 2 });
  expect(await clusterDiff({ ...local, agents: [] } as unknown as VirtualClusterOutputs, { ...local, snapshotKeys: ["a".repeat(64)] })).toMatchObject({
    changes: false,
  });
});

test("static: a host that cannot start its agent fails the create with its address, and nothing is left", async () => {
  // 10.213.6.61 is in no namespace: the agent cannot listen there.
  const list = [
    { address: hosts.hosts[0].address, netns: hosts.hosts[0].netns },
    { address: "10.213.6.61", netns: hosts.hosts[1].netns },
  ];
  const inputs = clusterInputs("bad", { manager: "static", hosts: 2, hostList: list, port: 7443 });
  await expect(clusterCreate(inputs)).rejects.toThrow(/host 1 \(10\.213\.6\.61\)/);
  expect(fs.existsSync(path.join(inputs.stateRoot, "clusters", `bad-${clusterKey(inputs.project, inputs.stack, "bad")}`))).toBe(false);
  for (const h of hosts.hosts) expect(await netnsPids(h.netns)).toEqual([]);
});

test("static with recovery terminate: the policy reaches every agent, is suspended while up restarts them (a new site policy file), and changes in place", async () => {
  const policyFile = path.join(dir, "site-policy.yaml");
  fs.writeFileSync(policyFile, "apiVersion: vse.dev/v1\nkind: SitePolicy\nmetadata: { name: site }\nspec: {}\n");
  const allocation = { manager: "static" as const, hosts: 2, hostList: hosts.hosts.map((h) => ({ address: h.address, netns: h.netns })), port: 7443 };
  const inputs: VirtualClusterInputs = { ...clusterInputs("rec", allocation), recovery: "terminate" };
  const created = (await clusterCreate(inputs)).outs as VirtualClusterOutputs;
  const policyOf = (c: VirtualClusterOutputs) =>
    Promise.all(
      c.agents.map((a) =>
        agentClient(a.url, c.token, c.ca)
          .request<{ policy: string }>("GET", "/v1/cluster/recovery")
          .then((r) => r.policy),
      ),
    );
  try {
    expect(await policyOf(created)).toEqual(["terminate", "terminate"]);
    // A new launch restarts every agent in turn; each is silent for longer than the heartbeats' suspicion (2 s) allows.
    const news = { ...inputs, sitePolicyFile: policyFile };
    expect(await clusterDiff(created, news)).toMatchObject({ changes: true, replaces: [] });
    // Meanwhile host 1's agent (restarted last) is asked for its policy: while host 0's restarts, nobody acts on a loss.
    const seen = new Set<string>();
    let updating = true;
    const watch = (async () => {
      while (updating) {
        await agentClient(created.agents[1].url, created.token, created.ca)
          .request<{ policy: string }>("GET", "/v1/cluster/recovery", undefined, 2000)
          .then((r) => seen.add(r.policy))
          .catch(() => undefined);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    const updated = (await clusterUpdate(created, news).finally(() => (updating = false))).outs as VirtualClusterOutputs;
    await watch;
    expect(seen.has("none")).toBe(true);
    expect(updated.agents.map((a, i) => a.pid !== created.agents[i].pid)).toEqual([true, true]);
    await new Promise((r) => setTimeout(r, 5000));
    // Nobody terminated anybody: both agents serve, with the policy back.
    const read = (await clusterRead("id", updated)).props as VirtualClusterOutputs;
    expect(read.agents.map((a) => a.healthy)).toEqual([true, true]);
    expect(await policyOf(read)).toEqual(["terminate", "terminate"]);
    // A restart may be noticed as a silence; it is then only recorded, or found answering again: never acted on.
    for (const f of read.failures ?? []) for (const r of f.recovery) expect(r).toMatch(/recorded only|answered again/);
    // A change of policy alone is in place.
    expect(await clusterDiff(read, { ...news, recovery: "restart" })).toMatchObject({ changes: true, replaces: [] });
    const changed = (await clusterUpdate(read, { ...news, recovery: "restart" })).outs as VirtualClusterOutputs;
    expect(changed.agents.map((a) => a.pid)).toEqual(read.agents.map((a) => a.pid));
    expect(await policyOf(changed)).toEqual(["restart", "restart"]);
    await clusterDelete(changed);
  } catch (err) {
    await clusterDelete(created).catch(() => undefined);
    throw err;
  }
  for (const h of hosts.hosts) expect(await netnsPids(h.netns)).toEqual([]);
});
