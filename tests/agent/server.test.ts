// The node agent as a real daemon (dist/provider/agent/main.js) on its unix
// socket: authentication, the site policy it serves and enforces, transport
// limits, and that it keeps serving after bad requests.
import * as fs from "fs";
import * as net from "net";
import * as path from "path";
import { AgentClient } from "../../provider/agent/client";
import { newClusterToken } from "../../provider/agent/protocol";
import { AgentRecord, startLocalAgent } from "../../provider/allocation/local";
import { clusterKey } from "../../provider/drivers/network";
import { rawRequest, testCluster, TestCluster, vmSpec, waitForVm } from "../support/agent";
import { processesUnder } from "../support/stack";

jest.setTimeout(5 * 60 * 1000);

const POLICY = `apiVersion: vse.dev/v1
kind: SitePolicy
metadata: { name: hpc-site }
spec:
  limits: { maxMemory: 256MiB, maxVcpus: 2, maxVmsPerAgent: 2 }
  allowedHypervisors: [qemu]
  forbiddenKernelArgs: ["init=*"]
`;

let c: TestCluster;
let agent: AgentRecord;

beforeAll(async () => {
  c = await testCluster({ policyYaml: POLICY });
  agent = await c.start(0);
});

afterAll(async () => {
  const dir = c.dir;
  await c.stop();
  expect(processesUnder(dir)).toEqual([]);
});

test("the agent listens on a socket inside its private state directory, never on TCP", async () => {
  const sock = agent.url.replace(/^unix:/, "");
  expect(path.dirname(sock)).toBe(agent.stateDir);
  expect(fs.statSync(agent.stateDir).mode & 0o777).toBe(0o700);
  expect(fs.statSync(sock).mode & 0o777).toBe(0o600);
  // No TCP listener belongs to the agent's process.
  const inodes = new Set(
    fs
      .readdirSync(`/proc/${agent.pid}/fd`)
      .map((fd) => {
        try {
          return /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${agent.pid}/fd/${fd}`))?.[1];
        } catch {
          return undefined;
        }
      })
      .filter(Boolean),
  );
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    const listening = fs
      .readFileSync(table, "utf8")
      .split("\n")
      .slice(1)
      .map((l) => l.trim().split(/\s+/))
      .filter((f) => f[3] === "0A")
      .map((f) => f[9]);
    expect(listening.filter((i) => inodes.has(i))).toEqual([]);
  }
});

test("a missing or wrong token gets 401, a token of another cluster 403, each with its own message", async () => {
  const none = await rawRequest(agent, "GET", "/v1/vms");
  expect(none.status).toBe(401);
  expect(none.headers["www-authenticate"]).toMatch(/^Bearer/);
  expect(none.body.error).toMatch(/^missing bearer token/);
  const wrong = await rawRequest(agent, "GET", "/v1/vms", { token: newClusterToken(c.key) });
  expect(wrong.status).toBe(401);
  expect(wrong.body.error).toBe("wrong bearer token for this cluster");
  const otherKey = clusterKey("test", "other-stack", "c");
  const foreign = await rawRequest(agent, "GET", "/v1/vms", { token: newClusterToken(otherKey) });
  expect(foreign.status).toBe(403);
  expect(foreign.body.error).toBe(`this token belongs to cluster ${otherKey}; this agent serves cluster ${c.key} only`);
  expect((await rawRequest(agent, "GET", "/v1/vms", { token: c.launch.token })).status).toBe(200);
});

test("the client refuses to send the token to a socket outside a private directory", async () => {
  const open = path.join(c.dir, "open");
  fs.mkdirSync(open, { mode: 0o755 });
  fs.chmodSync(open, 0o755);
  const sock = path.join(open, "agent.sock");
  let received = "";
  const srv = net.createServer((s) => s.on("data", (d) => (received += d.toString())));
  await new Promise<void>((r) => srv.listen(sock, r));
  try {
    await expect(new AgentClient(`unix:${sock}`, c.launch.token).request("GET", "/v1/vms")).rejects.toThrow(
      /refusing to send the token, .* is not a private directory/,
    );
    expect(received).toBe("");
  } finally {
    srv.close();
  }
});

test("GET /v1/policy serves the site's policy without a token", async () => {
  const res = await c.client().policy();
  expect(res.source).toBe(c.launch.policyFile);
  expect(res.policy.metadata.name).toBe("hpc-site");
  expect(res.policy.spec.limits).toEqual({ maxMemory: "256MiB", maxVcpus: 2, maxVmsPerAgent: 2 });
});

test("the agent enforces the site policy: 403 naming the rule and the field, nothing started", async () => {
  const client = c.client();
  const big = await rawRequest(agent, "PUT", "/v1/vms/big", { token: c.launch.token, body: JSON.stringify(vmSpec(c, "big", { memoryMiB: 512 })) });
  expect(big.status).toBe(403);
  expect(big.body.error).toBe('memory (-m): VM "big" has 512 MiB of memory; site policy "hpc-site" rule spec.limits.maxMemory allows at most 256 MiB per VM');
  const cpus = await rawRequest(agent, "PUT", "/v1/vms/cpus", { token: c.launch.token, body: JSON.stringify(vmSpec(c, "cpus", { vcpus: 4 })) });
  expect(cpus.status).toBe(403);
  expect(cpus.body.error).toMatch(/^vcpus \(-smp\): VM "cpus" has 4 vCPUs; site policy "hpc-site" rule spec\.limits\.maxVcpus allows at most 2 vCPUs per VM$/);
  const env = { name: "t", base: "busybox" as const, kernelArgs: [], job: { command: ["true"], env: {}, afterJob: "stay-up" as const, timeoutSeconds: 60 } };
  const spec = vmSpec(c, "init", { env });
  spec.config = spec.config.replace("-append console=ttyS0 panic=-1 quiet", "-append console=ttyS0 panic=-1 quiet init=/bin/sh");
  const init = await rawRequest(agent, "PUT", "/v1/vms/init", { token: c.launch.token, body: JSON.stringify(spec) });
  expect(init.status).toBe(403);
  expect(init.body.error).toMatch(
    /^kernel parameters \(-append\): kernel parameter "init=\/bin\/sh"; site policy "hpc-site" rule spec\.forbiddenKernelArgs\.0 forbids "init=\*"$/,
  );
  expect((await client.request<{ vms: unknown[] }>("GET", "/v1/vms")).vms).toEqual([]);
  expect(processesUnder(c.dir).filter((p) => p.argv[0].includes("qemu"))).toEqual([]);
});

test("per-agent caps: a VM beyond maxVmsPerAgent is refused while the others run", async () => {
  const client = c.client();
  for (const n of ["cap-0", "cap-1"]) await client.putVm(n, vmSpec(c, n));
  const third = await rawRequest(agent, "PUT", "/v1/vms/cap-2", { token: c.launch.token, body: JSON.stringify(vmSpec(c, "cap-2")) });
  expect(third.status).toBe(403);
  expect(third.body.error).toMatch(/^agent capacity: 3 VMs; site policy "hpc-site" rule spec\.limits\.maxVmsPerAgent allows at most 2 VMs per node agent$/);
  // The running ones are untouched by the refusal.
  for (const n of ["cap-0", "cap-1"]) await waitForVm(client, n, (v) => v.job.state === "done");
  await client.deleteVm("cap-0");
  await client.putVm("cap-2", vmSpec(c, "cap-2"));
  for (const n of ["cap-1", "cap-2"]) await client.deleteVm(n);
});

test("a site that edits its policy file is enforced from the next request on", async () => {
  const file = c.launch.policyFile!;
  const before = fs.readFileSync(file, "utf8");
  try {
    fs.writeFileSync(file, before.replace("maxMemory: 256MiB", "maxMemory: 64MiB"));
    fs.utimesSync(file, new Date(), new Date(Date.now() + 5000));
    const res = await rawRequest(agent, "PUT", "/v1/vms/small", { token: c.launch.token, body: JSON.stringify(vmSpec(c, "small", { memoryMiB: 128 })) });
    expect(res.status).toBe(403);
    expect(res.body.error).toMatch(/allows at most 64 MiB per VM/);
    // A broken edit keeps the last good policy instead of opening the host.
    fs.writeFileSync(file, "kind: [");
    fs.utimesSync(file, new Date(), new Date(Date.now() + 10000));
    expect(
      (await rawRequest(agent, "PUT", "/v1/vms/small", { token: c.launch.token, body: JSON.stringify(vmSpec(c, "small", { memoryMiB: 128 })) })).status,
    ).toBe(403);
  } finally {
    fs.writeFileSync(file, before);
    fs.utimesSync(file, new Date(), new Date(Date.now() + 15000));
  }
});

test("a second agent on the same state directory is refused: the first holds the lock", async () => {
  await expect(startLocalAgent(agent.stateDir, c.launch, 0)).rejects.toThrow(/another agent \(pid \d+\) holds/);
  // The daemon itself, started by hand past that check, finds the lock taken and leaves the socket alone.
  const execa = require("execa") as typeof import("execa");
  const main = path.resolve(__dirname, "..", "..", "dist", "provider", "agent", "main.js");
  const args = [
    "--state-dir",
    agent.stateDir,
    "--token-file",
    path.join(agent.stateDir, "token"),
    "--cluster-key",
    c.key,
    "--image-store",
    c.launch.imageStore,
  ];
  const res = await execa(process.execPath, [main, ...args], { reject: false, timeout: 20000 });
  expect(res.exitCode).toBe(3);
  expect(res.stderr).toMatch(new RegExp(`another agent \\(pid ${agent.pid}\\) holds`));
  expect((await c.client().health()).pid).toBe(agent.pid);
});

test("an agent refuses a token file of another cluster at start", async () => {
  const other = { ...c.launch, token: newClusterToken(clusterKey("x", "y", "z")) };
  await expect(startLocalAgent(path.join(c.clusterDir, "host-9"), other, 9)).rejects.toThrow(/expected a token of cluster/);
});
