import type { VmView } from "../../provider/agent/protocol";
import {
  DeploymentResource,
  formatStatusText,
  formatUptime,
  liveStatus,
  revealSecret,
  runStatus,
  stackStateOf,
  vseResourceKind,
} from "../../provider/cli/status";

const TOKEN = "vse1.0123456789.".padEnd(16 + 64, "a");
const SECRET_SIG = "4dabf18193072939515e22adb298388d";
const NOW = new Date("2026-11-23T12:00:00.000Z");

const CLUSTER: DeploymentResource = {
  urn: "urn:pulumi:local::vse::pulumi-nodejs:dynamic/vse:VirtualCluster::local-cluster",
  type: "pulumi-nodejs:dynamic/vse:VirtualCluster",
  outputs: {
    name: "local-cluster",
    clusterKey: "0123456789",
    token: { [SECRET_SIG]: "1b47061264138c4ac30d75fd1eb44270", plaintext: JSON.stringify(TOKEN) },
    agents: [
      { host: 0, url: "unix:/s/host-0/agent.sock", pid: 100, stateDir: "/s/host-0", healthy: true },
      { host: 1, url: "unix:/s/host-1/agent.sock", pid: 101, stateDir: "/s/host-1", healthy: true },
    ],
  },
};
const vm = (name: string, host: number, extra: Record<string, unknown> = {}): DeploymentResource => ({
  urn: `urn:pulumi:local::vse::pulumi-nodejs:dynamic/vse:VirtualCluster$pulumi-nodejs:dynamic/vse:VirtualMachine::${name}`,
  type: "pulumi-nodejs:dynamic/vse:VirtualMachine",
  outputs: { vmName: name, cluster: "local-cluster", host, hypervisor: "qemu", agentUrl: `unix:/s/host-${host}/agent.sock`, status: "running", ...extra },
});
const RESOURCES: DeploymentResource[] = [
  { urn: "urn:pulumi:local::vse::pulumi:pulumi:Stack::vse-local", type: "pulumi:pulumi:Stack", outputs: {} },
  CLUSTER,
  vm("local-cluster-0", 0),
  vm("local-cluster-1", 1, { launch: "warm" }),
  vm("local-cluster-2", 0),
];

const view = (name: string, o: Partial<VmView["observed"]>, job: VmView["job"]): VmView => ({
  name,
  spec: { hypervisor: "qemu", config: "-m 256M", markers: { begin: "B", end: "E" }, stopGraceSeconds: 1 },
  observed: { state: "running", starts: 1, ...o },
  job,
  consoleTail: "",
});

const HOST0: VmView[] = [
  view("local-cluster-0", { pid: 4242, startedAt: "2026-11-23T11:58:55.000Z" }, { state: "done", exitCode: 0, output: "5\nsecond line\n" }),
  view("local-cluster-2", { state: "exited", startedAt: "2026-11-23T11:00:00.000Z" }, { state: "waiting" }),
];

async function ask(url: string, token: string): Promise<VmView[]> {
  expect(token).toBe(TOKEN);
  if (url.includes("host-1")) throw new Error("agent unix:/s/host-1/agent.sock is unreachable: connect ECONNREFUSED");
  return HOST0;
}

test("resources are told apart by their type, or the last type of their URN", () => {
  expect(RESOURCES.map(vseResourceKind)).toEqual([undefined, "VirtualCluster", "VirtualMachine", "VirtualMachine", "VirtualMachine"]);
  expect(
    vseResourceKind({
      urn: "urn:pulumi:s::vse::pulumi-nodejs:dynamic:Resource::x",
      type: "pulumi-nodejs:dynamic:Resource",
      outputs: { agents: [], clusterKey: "k" },
    }),
  ).toBe("VirtualCluster");
});

test("secrets shown by stack export are revealed; plain values pass through", () => {
  expect(revealSecret({ [SECRET_SIG]: "1b47061264138c4ac30d75fd1eb44270", plaintext: '"abc"' })).toBe("abc");
  expect(revealSecret({ [SECRET_SIG]: "1b47061264138c4ac30d75fd1eb44270", ciphertext: "v1:xyz" })).toBeUndefined();
  expect(revealSecret("abc")).toBe("abc");
});

test("the stack's state and the agents' answers make one row per VM; a dead agent's VMs are unreachable", async () => {
  const s = await liveStatus("local", stackStateOf(RESOURCES), ask, NOW);
  expect(s.clusters).toHaveLength(1);
  const c = s.clusters[0];
  expect(c.agents.map((a) => [a.host, a.reachable])).toEqual([
    [0, true],
    [1, false],
  ]);
  expect(c.vms).toEqual([
    {
      vm: "local-cluster-0",
      host: 0,
      hypervisor: "qemu",
      state: "running",
      pid: 4242,
      launch: "cold",
      job: "done",
      exitCode: 0,
      output: "5",
      startedAt: "2026-11-23T11:58:55.000Z",
      upSeconds: 65,
    },
    expect.objectContaining({ vm: "local-cluster-1", host: 1, state: "agent unreachable", pid: null, launch: "warm", job: null, output: null }),
    expect.objectContaining({ vm: "local-cluster-2", state: "exited", job: "waiting", upSeconds: null }),
  ]);
});

test("the text form is one aligned table per cluster", async () => {
  const s = await liveStatus("local", stackStateOf(RESOURCES), ask, NOW);
  expect(formatStatusText(s)).toBe(
    [
      "cluster local-cluster (stack local; agents: host 0 ok, host 1 unreachable)",
      "VM               HOST  HYPERVISOR  STATE              PID   LAUNCH  JOB      EXIT  OUTPUT  UP",
      "local-cluster-0  0     qemu        running            4242  cold    done     0     5       1m05s",
      "local-cluster-1  1     qemu        agent unreachable  -     warm    -        -     -       -",
      "local-cluster-2  0     qemu        exited             -     cold    waiting  -     -       -",
      "host 1: agent unix:/s/host-1/agent.sock is unreachable: connect ECONNREFUSED",
      "",
    ].join("\n"),
  );
});

test("a VM the agent holds but the stack does not declare is listed as such; a VM the agent lacks is missing", async () => {
  const state = stackStateOf([CLUSTER, vm("local-cluster-0", 0), vm("local-cluster-9", 0)]);
  const s = await liveStatus("local", state, async (url) => (url.includes("host-0") ? HOST0 : []), NOW);
  expect(s.clusters[0].vms.map((r) => [r.vm, r.state, r.unmanaged ?? false])).toEqual([
    ["local-cluster-0", "running", false],
    ["local-cluster-2", "exited", true],
    ["local-cluster-9", "missing", false],
  ]);
  expect(formatStatusText(s)).toContain("local-cluster-2 (not in stack)");
});

test("a stack without clusters says so", () => {
  expect(formatStatusText({ stack: "s", at: NOW.toISOString(), clusters: [] })).toBe("stack s: no virtual clusters\n");
});

test("uptimes read as seconds, minutes, hours or days", () => {
  expect([null, 0, 59, 60, 75, 3599, 3600, 3725, 86399, 2 * 86400 + 3 * 3600].map(formatUptime)).toEqual([
    "-",
    "0s",
    "59s",
    "1m00s",
    "1m15s",
    "59m59s",
    "1h00m",
    "1h02m",
    "23h59m",
    "2d03h",
  ]);
});

test("--format json prints the same data; --watch redraws until SIGINT and then returns 0", async () => {
  let out = "";
  const read = async () => stackStateOf(RESOURCES);
  const opts = { stack: "local", workDir: "/", env: {} };
  expect(await runStatus({ ...opts, format: "json", watch: false }, (t) => (out += t), { read, ask })).toBe(0);
  const json = JSON.parse(out);
  expect(json.clusters[0].vms.map((r: { state: string }) => r.state)).toEqual(["running", "agent unreachable", "exited"]);

  out = "";
  const done = runStatus({ ...opts, format: "text", watch: true }, (t) => (out += t), { read, ask });
  await new Promise((r) => setTimeout(r, 1500));
  process.emit("SIGINT");
  expect(await done).toBe(0);
  expect(out.split("\x1b[H\x1b[2J").length - 1).toBeGreaterThanOrEqual(2);
  expect(process.listenerCount("SIGINT")).toBe(0);
});

test("vse status parses its options: --watch takes no value, paths and other commands' options are refused", async () => {
  const { main } = await import("../../provider/cli/vse");
  const run = async (...argv: string[]) => {
    let stderr = "";
    const code = await main(argv, { cwd: "/", stdout: () => undefined, stderr: (t) => (stderr += t) });
    return { code, stderr };
  };
  expect(await run("status", "--watch=yes")).toEqual({ code: 2, stderr: expect.stringContaining("--watch takes no value") });
  expect(await run("status", "defs/")).toEqual({ code: 2, stderr: expect.stringContaining('status takes no paths, found "defs/"') });
  expect(await run("status", "--site-policy", "x")).toEqual({ code: 2, stderr: expect.stringContaining("--site-policy does not apply to vse status") });
  expect(await run("status", "--format", "yaml")).toEqual({ code: 2, stderr: expect.stringContaining("--format must be one of text, json") });
  expect(await run("validate", "--watch", "defs")).toEqual({ code: 2, stderr: expect.stringContaining("--watch does not apply to vse validate") });
});
