// Agents beyond one machine (issue 9, foundation): three namespace hosts, an
// agent in each serving over HTTPS on its host's address only, with a server
// certificate from the cluster's CA; checked from the root namespace: health,
// token authentication as on the unix socket, a client that refuses a wrong
// CA or a certificate for another address before it sends the token, a QEMU
// job run through one agent, and a tear-down that leaves nothing behind.
// Needs root (iproute2) and the compiled agent (npx tsc -p tsconfig.json).
import * as crypto from "crypto";
import * as fs from "fs";
import * as http from "http";
import * as os from "os";
import * as path from "path";
import * as tls from "tls";
import { AgentClient, AgentError, connectPinned } from "../../provider/agent/client";
import { newClusterToken } from "../../provider/agent/protocol";
import { AgentLaunch } from "../../provider/allocation/local";
import { netnsLeftovers, NetnsHosts, setUpNetnsHosts, tearDownNetnsHosts } from "../../provider/allocation/netns";
import { StaticAgentRecord, startStaticCluster, staticClient, stopStaticCluster } from "../../provider/allocation/static";
import { ClusterCa, ensureClusterCa, issueServerCert } from "../../provider/allocation/tls";
import { clusterKey } from "../../provider/drivers/network";
import { vmSpec, waitForVm } from "../support/agent";
import { processEnded, processesUnder } from "../support/stack";

jest.setTimeout(90 * 1000);

// Only addresses in this subnet (and 127.0.0.0/8) are ever used.
const SUBNET = "10.213.0.64/26";
// A fixed tag with its own subnet: whatever a killed earlier run left behind under it is torn down first.
const TAG = "ttls";
let dir: string;
let clusterDir: string;
let hosts: NetnsHosts;
let launch: AgentLaunch;
let ca: ClusterCa;
let agents: StaticAgentRecord[] = [];
let stopped = false;
const key = () => launch.clusterKey;

beforeAll(async () => {
  await tearDownNetnsHosts(TAG);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-tls-"));
  clusterDir = path.join(dir, "clusters", "c");
  hosts = await setUpNetnsHosts({ tag: TAG, count: 3, subnet: SUBNET });
  const k = clusterKey("test", path.basename(dir), "c");
  launch = { token: newClusterToken(k), clusterKey: k, imageStore: path.join(dir, "cache", "images") };
  const t0 = Date.now();
  ({ ca, agents } = await startStaticCluster(
    clusterDir,
    launch,
    hosts.hosts.map((h) => ({ address: h.address, netns: h.netns })),
  ));
  console.log(`3 agents started over TLS in ${Date.now() - t0} ms`);
});

afterAll(async () => {
  try {
    if (!stopped && agents.length) await stopStaticCluster(clusterDir, agents, launch, ca.cert);
  } finally {
    await tearDownNetnsHosts(TAG);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function netnsInode(pid: number): string {
  return fs.readlinkSync(`/proc/${pid}/ns/net`);
}

/** The TCP listeners a process sees in its namespace that belong to it: [address, port]. */
function tcpListeners(pid: number): [string, number][] {
  const inodes = new Set<string>();
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]);
    } catch {
      // closed meanwhile
    }
  }
  const out: [string, number][] = [];
  for (const table of ["tcp", "tcp6"]) {
    for (const line of fs.readFileSync(`/proc/${pid}/net/${table}`, "utf8").split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || f[3] !== "0A" || !inodes.has(f[9])) continue;
      const [hex, port] = f[1].split(":");
      const addr = hex.length === 8 ? [3, 2, 1, 0].map((i) => parseInt(hex.slice(i * 2, i * 2 + 2), 16)).join(".") : hex;
      out.push([addr, parseInt(port, 16)]);
    }
  }
  return out;
}

/** Any request over a pinned TLS connection, with or without a token. */
async function rawHttps(a: StaticAgentRecord, method: string, pathname: string, token?: string): Promise<{ status: number; body: { error?: string } }> {
  const sock = await connectPinned(a.address, a.port, ca.cert, new crypto.X509Certificate(ca.cert).fingerprint256, 5000);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        createConnection: () => sock,
        method,
        path: pathname,
        headers: { Host: `${a.address}:${a.port}`, ...(token !== undefined ? { Authorization: `Bearer ${token}` } : {}) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode!, body: JSON.parse(Buffer.concat(chunks).toString()) }));
      },
    );
    req.on("error", reject);
    req.end();
  });
}

test("each agent runs in its host's namespace and listens over TLS on that host's address only", async () => {
  expect(agents.map((a) => a.url)).toEqual(hosts.hosts.map((h) => `https://${h.address}:7443`));
  for (const [i, a] of agents.entries()) {
    const h = hosts.hosts[i];
    const health = await staticClient(a, launch.token, ca.cert).health();
    expect(health).toMatchObject({ ok: true, pid: a.pid, clusterKey: key() });
    // In the host's namespace: the same network namespace as a process started there by `ip netns exec`.
    expect(netnsInode(a.pid)).not.toBe(netnsInode(process.pid));
    const execa = require("execa") as typeof import("execa");
    const probe = await execa("ip", ["netns", "exec", h.netns, "readlink", "/proc/self/ns/net"]);
    expect(netnsInode(a.pid)).toBe(probe.stdout.trim());
    expect(tcpListeners(a.pid)).toEqual([[h.address, 7443]]);
    // The unix socket stays for whoever is on the host.
    expect(a.localUrl).toBe(`unix:${path.join(a.stateDir, "agent.sock")}`);
    // The key is private, the certificate names the address and nothing else.
    expect(fs.statSync(path.join(a.stateDir, "tls", "agent.key")).mode & 0o777).toBe(0o600);
    const cert = new crypto.X509Certificate(fs.readFileSync(path.join(a.stateDir, "tls", "agent.pem")));
    expect(cert.subjectAltName).toBe(`IP Address:${h.address}`);
    expect(cert.checkIssued(new crypto.X509Certificate(ca.cert))).toBe(true);
  }
  expect(fs.statSync(ca.keyFile).mode & 0o777).toBe(0o600);
  expect(fs.statSync(path.dirname(ca.keyFile)).mode & 0o777).toBe(0o700);
});

test("token authentication over TLS is the unix socket's: 401 missing or wrong, 403 another cluster's", async () => {
  const a = agents[1];
  const missing = await rawHttps(a, "GET", "/v1/vms");
  expect(missing.status).toBe(401);
  expect(missing.body.error).toMatch(/missing bearer token/);
  const wrong = await rawHttps(a, "GET", "/v1/vms", newClusterToken(key()));
  expect(wrong.status).toBe(401);
  expect(wrong.body.error).toMatch(/wrong bearer token/);
  const other = clusterKey("test", "other", "c");
  const foreign = await rawHttps(a, "GET", "/v1/vms", newClusterToken(other));
  expect(foreign.status).toBe(403);
  expect(foreign.body.error).toContain(`belongs to cluster ${other}`);
  await expect(new AgentClient(a.url, newClusterToken(other), { ca: ca.cert }).request("GET", "/v1/vms")).rejects.toMatchObject({ status: 403 });
  expect(await staticClient(a, launch.token, ca.cert).request("GET", "/v1/vms")).toEqual({ vms: [] });
});

test("agent URLs: unix:/abs/path or https://<ipv4>:<port>, an https client needs exactly the cluster's CA", () => {
  for (const bad of [
    "http://10.213.0.66:7443",
    "https://agent.example:7443",
    "https://0.0.0.0:7443",
    "https://10.213.0.66",
    "https://10.213.0.256:1",
    "unix:rel",
  ]) {
    expect(() => new AgentClient(bad, launch.token, { ca: ca.cert })).toThrow(/expected unix:<absolute socket path> or https/);
  }
  expect(() => new AgentClient(agents[0].url, launch.token)).toThrow(/needs the cluster's CA/);
  const leaf = fs.readFileSync(path.join(agents[0].stateDir, "tls", "agent.pem"), "utf8");
  expect(() => new AgentClient(agents[0].url, launch.token, { ca: leaf })).toThrow(/exactly one CA certificate/);
});

test("the agent refuses the wildcard address, a listener without TLS, and a key others can read", async () => {
  const execa = require("execa") as typeof import("execa");
  const main = path.resolve(__dirname, "..", "..", "dist", "provider", "agent", "main.js");
  const a = agents[0];
  const base = [
    "--state-dir",
    path.join(dir, "refused"),
    "--token-file",
    path.join(a.stateDir, "token"),
    "--cluster-key",
    key(),
    "--image-store",
    launch.imageStore,
  ];
  const tlsArgs = ["--tls-cert", path.join(a.stateDir, "tls", "agent.pem"), "--tls-key", path.join(a.stateDir, "tls", "agent.key")];
  const wildcard = await execa(process.execPath, [main, ...base, "--listen", "0.0.0.0:7443", ...tlsArgs], { reject: false });
  expect([wildcard.exitCode, wildcard.stderr]).toEqual([2, expect.stringContaining("never listens on 0.0.0.0")]);
  const plain = await execa(process.execPath, [main, ...base, "--listen", `${a.address}:7444`], { reject: false });
  expect([plain.exitCode, plain.stderr]).toEqual([2, expect.stringContaining("only over TLS")]);
  const openKey = path.join(dir, "open.key");
  fs.copyFileSync(path.join(a.stateDir, "tls", "agent.key"), openKey);
  fs.chmodSync(openKey, 0o644);
  const readable = await execa(process.execPath, [main, ...base, "--listen", `${a.address}:7444`, ...tlsArgs.slice(0, 3), openKey], { reject: false });
  expect([readable.exitCode, readable.stderr]).toEqual([2, expect.stringContaining("expected a private file")]);
  expect(fs.existsSync(path.join(dir, "refused"))).toBe(false);
});

interface Recorder {
  port: number;
  received: () => string;
  close: () => Promise<void>;
}

/** A TLS server on 127.0.0.1 with the given certificate that records every byte it receives and answers any request with 200. */
async function recordingServer(certFile: string, keyFile: string): Promise<Recorder> {
  let received = "";
  const server = tls.createServer({ cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) }, (sock) => {
    sock.on("data", (d: Buffer) => {
      received += d.toString("latin1");
      if (received.includes("\r\n\r\n"))
        sock.end('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{"ok":true}');
    });
    sock.on("error", () => undefined);
  });
  server.on("tlsClientError", () => undefined);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as { port: number }).port,
    received: () => received,
    close: () => new Promise((r) => server.close(() => r())),
  };
}

test("the client refuses a wrong CA or a certificate for another address before it sends the token", async () => {
  const certs = path.join(dir, "impostors");
  // The same cluster key, another key pair: a CA that only looks like the cluster's.
  const impostorCa = await ensureClusterCa(path.join(certs, "ca"), key());
  const cases: { name: string; cert: { certFile: string; keyFile: string }; clientCa: string; accepted: boolean }[] = [
    {
      name: "control: the cluster's CA, for 127.0.0.1",
      cert: await issueServerCert(ca, "127.0.0.1", path.join(certs, "good")),
      clientCa: ca.cert,
      accepted: true,
    },
    {
      name: "another CA (same name), for 127.0.0.1",
      cert: await issueServerCert(impostorCa, "127.0.0.1", path.join(certs, "foreign")),
      clientCa: ca.cert,
      accepted: false,
    },
    {
      name: "the cluster's CA, for another address",
      cert: await issueServerCert(ca, agents[0].address, path.join(certs, "moved")),
      clientCa: ca.cert,
      accepted: false,
    },
    { name: "a client given another CA", cert: await issueServerCert(ca, "127.0.0.1", path.join(certs, "good2")), clientCa: impostorCa.cert, accepted: false },
  ];
  for (const c of cases) {
    const rec = await recordingServer(c.cert.certFile, c.cert.keyFile);
    try {
      const client = new AgentClient(`https://127.0.0.1:${rec.port}`, launch.token, { ca: c.clientCa });
      const result = await client.request("GET", "/v1/vms", undefined, 5000).then(
        () => "accepted",
        (err: AgentError) => err.message,
      );
      if (c.accepted) {
        expect([c.name, result]).toEqual([c.name, "accepted"]);
        expect(rec.received()).toContain(`Authorization: Bearer ${launch.token}`);
      } else {
        expect([c.name, result]).toEqual([c.name, expect.stringMatching(/refusing to send the token/)]);
        expect([c.name, rec.received()]).toEqual([c.name, ""]);
      }
    } finally {
      await rec.close();
    }
  }
  // The real agent, dialled with another CA: refused too.
  await expect(new AgentClient(agents[0].url, launch.token, { ca: impostorCa.cert }).health()).rejects.toThrow(/refusing to send the token/);
});

test("a QEMU job started through one agent runs in its host's namespace and prints its result", async () => {
  const a = agents[2];
  const client = staticClient(a, launch.token, ca.cert);
  const spec = vmSpec({ key: key(), cacheDir: path.join(dir, "cache") }, "job-0");
  const t0 = Date.now();
  await client.putVm("job-0", spec);
  const v = await waitForVm(client, "job-0", (x) => x.job.state === "done", 60000);
  console.log(`QEMU job over TLS on ${a.address}: ${Date.now() - t0} ms`);
  expect(v.job).toMatchObject({ state: "done", exitCode: 0 });
  expect(v.job.output).toContain("job-42");
  expect(v.observed.pid).toBeDefined();
  expect(netnsInode(v.observed.pid!)).toBe(netnsInode(a.pid));
  await client.deleteVm("job-0");
  expect(await client.getVm("job-0")).toBeUndefined();
});

test("stopping the cluster and tearing down the hosts leaves no agent, namespace, link or process behind", async () => {
  const pids = agents.map((a) => a.pid);
  const t0 = Date.now();
  await stopStaticCluster(clusterDir, agents, launch, ca.cert);
  stopped = true;
  await tearDownNetnsHosts(TAG);
  await tearDownNetnsHosts(TAG);
  console.log(`stop and tear-down: ${Date.now() - t0} ms`);
  expect(fs.existsSync(clusterDir)).toBe(false);
  expect(await netnsLeftovers(TAG)).toEqual({ netns: [], links: [] });
  for (const pid of pids) expect([pid, processEnded(pid)]).toEqual([pid, true]);
  expect(processesUnder(dir)).toEqual([]);
});
