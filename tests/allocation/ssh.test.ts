// The `ssh` allocation manager (issue 10) against a real OpenSSH server
// (Debian openssh-server) in each of three namespace hosts, each with a host
// key and an authorized key made for this run: agents started over SSH on two
// hosts answer over TLS, a QEMU job runs through one of them, and release
// leaves no agent, QEMU or state; a host whose key is not the pinned one is
// refused before anything runs, a wrong user or key is refused with a clear
// error, and nothing is left behind in any case. Plus the strict shell quoting
// the remote command is built with. Needs root, /usr/sbin/sshd and the
// compiled code (npx tsc -p tsconfig.json).
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { newClusterToken } from "../../provider/agent/protocol";
import type { AllocationRequest, ClusterAgents } from "../../provider/allocation/allocator";
import { AgentLaunch } from "../../provider/allocation/local";
import { netnsLeftovers, netnsPids, NetnsHosts, setUpNetnsHosts, tearDownNetnsHosts } from "../../provider/allocation/netns";
import { staticClient } from "../../provider/allocation/static";
import {
  checkSshSettings,
  remoteStateDir,
  shellCommand,
  shellQuote,
  sshAgentHealthy,
  SshAgentRecord,
  sshAllocator,
  sshArgv,
  SshSettings,
} from "../../provider/allocation/ssh";
import { clusterKey } from "../../provider/drivers/network";
import type { AllocationModel } from "../../provider/model/resolve";
import { vmSpec, waitForVm } from "../support/agent";
import { sshKeygen, startSshd, TestSshd } from "../support/sshd";
import { processesUnder, processEnded } from "../support/stack";

jest.setTimeout(180 * 1000);

// Only addresses in this subnet are used; whatever a killed earlier run left under the tag is torn down first.
const SUBNET = "10.213.1.64/26";
const TAG = "tssh";
let dir: string;
let hosts: NetnsHosts;
let sshds: TestSshd[] = [];
let launch: AgentLaunch;
let settings: SshSettings;
let wrongKeyFile: string;

beforeAll(async () => {
  await tearDownNetnsHosts(TAG);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-ssh-"));
  hosts = await setUpNetnsHosts({ tag: TAG, count: 3, subnet: SUBNET });
  const identityFile = path.join(dir, "id_ed25519");
  const userKey = await sshKeygen(identityFile, "vse test user");
  wrongKeyFile = path.join(dir, "other_ed25519");
  await sshKeygen(wrongKeyFile, "vse test other");
  sshds = await Promise.all(
    hosts.hosts.map((h) => startSshd({ netns: h.netns, address: h.address, dir: path.join(dir, `sshd-${h.index}`), authorizedKeys: [userKey] })),
  );
  // Hosts 0 and 1 pinned with their real keys; host 2 with a key that is not its own.
  const impostor = await sshKeygen(path.join(dir, "impostor_host_key"), "not host 2");
  const knownHostsFile = path.join(dir, "known_hosts");
  fs.writeFileSync(
    knownHostsFile,
    [sshds[0].knownHostsLine, sshds[1].knownHostsLine, `${hosts.hosts[2].address} ${impostor.split(" ").slice(0, 2).join(" ")}`, ""].join("\n"),
  );
  settings = { user: "root", identityFile, knownHostsFile, stateDir: path.join(dir, "remote") };
  const k = clusterKey("test", path.basename(dir), "c");
  launch = { token: newClusterToken(k), clusterKey: k, imageStore: path.join(dir, "cache", "images") };
});

afterAll(async () => {
  try {
    for (const s of sshds) await s.stop();
  } finally {
    await tearDownNetnsHosts(TAG);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function request(name: string, addresses: string[], ssh: SshSettings = settings): AllocationRequest {
  const allocation = { manager: "ssh", hosts: addresses.length, hostList: addresses.map((address) => ({ address })), port: 7443, ssh } as AllocationModel;
  return { clusterName: name, clusterKey: launch.clusterKey, clusterDir: path.join(dir, "clusters", name), launch, allocation };
}

function netnsInode(pid: number): string {
  return fs.readlinkSync(`/proc/${pid}/ns/net`);
}

/** Processes of this run other than the sshds themselves (agents, QEMU, bootstraps). */
function leftovers(): { pid: number; argv: string[] }[] {
  const daemons = new Set(sshds.map((s) => s.pid));
  return processesUnder(dir).filter((p) => !daemons.has(p.pid));
}

/** In each namespace host, nothing runs but its sshd. */
async function onlySshdInHosts(): Promise<void> {
  for (const [i, h] of hosts.hosts.entries()) {
    // A finished session's sshd child may take a moment to exit.
    for (let n = 0; n < 50 && (await netnsPids(h.netns)).length > 1; n++) await new Promise((r) => setTimeout(r, 100));
    expect([h.netns, await netnsPids(h.netns)]).toEqual([h.netns, [sshds[i].pid]]);
  }
}

test("shellQuote: one argument each through a real shell, whatever it holds; control characters and non-ASCII refused", async () => {
  const execa = require("execa") as typeof import("execa");
  const tricky = [
    "plain",
    "",
    " spaced  out ",
    "it's",
    "'",
    "''",
    "a'b'c",
    "$HOME",
    "`id`",
    "$(id)",
    "a;b",
    "a|b&c>d<e",
    "*",
    "~",
    "\\",
    '"',
    "-n",
    "!x",
    "#c",
    "%s",
  ];
  const r = await execa("/bin/sh", ["-c", `printf '%s\\n' ${shellCommand(tricky)}`]);
  expect(r.stdout.split("\n")).toEqual(tricky);
  expect(shellQuote("it's")).toBe(`'it'\\''s'`);
  for (const bad of ["a\nb", "a\rb", "tab\there", "nul\0", "é", "\x1b[31m", "\x7f"])
    expect(() => shellQuote(bad)).toThrow(/shellQuote: refusing character U\+/);
  expect(() => shellCommand([])).toThrow(/at least one argument/);
});

test("ssh is asked for key authentication only and a pinned host key, never accept-new; the ssh block is checked field by field", () => {
  const argv = sshArgv(checkSshSettings(settings), "10.213.1.66", "true").join(" ");
  for (const o of [
    "BatchMode=yes",
    "PasswordAuthentication=no",
    "IdentitiesOnly=yes",
    "StrictHostKeyChecking=yes",
    `UserKnownHostsFile=${settings.knownHostsFile}`,
  ])
    expect(argv).toContain(`-o ${o}`);
  expect(argv).toContain("-F none");
  expect(argv).not.toMatch(/accept-new|StrictHostKeyChecking=no/);
  expect(() => checkSshSettings({ ...settings, user: "root; rm -rf /" })).toThrow(/allocation\.ssh\.user: expected a user name/);
  expect(() => checkSshSettings({ ...settings, identityFile: "id_rsa" })).toThrow(/allocation\.ssh\.identityFile: expected an absolute path/);
  expect(() => checkSshSettings({ ...settings, knownHostsFile: "/etc/../etc/ssh/known_hosts" })).toThrow(
    /allocation\.ssh\.knownHostsFile: expected an absolute path/,
  );
  expect(() => checkSshSettings({ ...settings, stateDir: "/var/lib/vse agents" })).toThrow(/allocation\.ssh\.stateDir/);
  expect(() => checkSshSettings({ ...settings, port: 0 })).toThrow(/allocation\.ssh\.port: expected a port/);
  expect(() => checkSshSettings(undefined)).toThrow(/allocation\.ssh: expected the ssh block/);
  expect(() => sshArgv(checkSshSettings(settings), "0.0.0.0", "true")).toThrow(/never listens on 0\.0\.0\.0/);
});

test("agents started over SSH on two hosts answer over TLS, run a QEMU job, restart, and release leaves nothing", async () => {
  const req = request("c", [hosts.hosts[0].address, hosts.hosts[1].address]);
  const t0 = Date.now();
  const state: ClusterAgents = await sshAllocator.allocate(req);
  console.log(`2 agents started over SSH in ${Date.now() - t0} ms`);
  const agents = state.agents as SshAgentRecord[];
  expect(state.info).toEqual({ sshHosts: `${hosts.hosts[0].address} ${hosts.hosts[1].address}`, sshUser: "root" });
  expect(state.ca).toContain("-----BEGIN CERTIFICATE-----");
  for (const [i, a] of agents.entries()) {
    const h = hosts.hosts[i];
    expect(a).toMatchObject({
      host: i,
      url: `https://${h.address}:7443`,
      address: h.address,
      stateDir: remoteStateDir(checkSshSettings(settings), launch.clusterKey, i),
    });
    expect(await staticClient(a, launch.token, state.ca!).health()).toMatchObject({ ok: true, pid: a.pid, clusterKey: launch.clusterKey });
    expect(await sshAgentHealthy(a, launch.token, state.ca!)).toBe(true);
    // Started by that host's sshd: in its network namespace, and sshd logged the key login.
    expect(netnsInode(a.pid)).toBe(netnsInode(sshds[i].pid));
    expect(fs.readFileSync(sshds[i].logFile, "utf8")).toMatch(/Accepted publickey for root/);
    // The secrets reached the host's state directory over the connection; the host key is private.
    expect(fs.readFileSync(path.join(a.stateDir, "token"), "utf8")).toBe(launch.token);
    expect(fs.statSync(path.join(a.stateDir, "tls", "agent.key")).mode & 0o777).toBe(0o600);
  }
  // No host key stays with the controller: only the CA.
  expect(fs.readdirSync(req.clusterDir)).toEqual(["ca"]);

  const client = staticClient(agents[1], launch.token, state.ca!);
  await client.putVm("job-0", vmSpec({ key: launch.clusterKey, cacheDir: path.join(dir, "cache") }, "job-0"));
  const v = await waitForVm(client, "job-0", (x) => x.job.state === "done", 120000);
  expect(v.job).toMatchObject({ state: "done", exitCode: 0 });
  expect(v.job.output).toContain("job-42");
  const qemuPid = v.observed.pid!;
  expect(netnsInode(qemuPid)).toBe(netnsInode(sshds[1].pid));

  // A restart over SSH: a new agent process re-attaches to the running guest.
  const again = (await sshAllocator.restartAgent(req, state, agents[1])) as SshAgentRecord;
  expect(again.pid).not.toBe(agents[1].pid);
  expect(processEnded(agents[1].pid)).toBe(true);
  expect(await sshAllocator.healthy(req, state, again)).toBe(true);
  expect((await staticClient(again, launch.token, state.ca!).getVm("job-0"))?.observed.pid).toBe(qemuPid);
  state.agents[1] = again;

  // The guest still runs (its job is done, the VM stays up): release stops it with the agents.
  await sshAllocator.release(req, state);
  for (const a of [...agents, again]) expect(processEnded(a.pid)).toBe(true);
  expect(processEnded(qemuPid)).toBe(true);
  expect(leftovers()).toEqual([]);
  expect(fs.existsSync(req.clusterDir)).toBe(false);
  expect(fs.readdirSync(settings.stateDir!)).toEqual([]);
  await onlySshdInHosts();
});

test("a host whose key is not the pinned one is refused before anything runs on it, and the other host is undone", async () => {
  const before = fs.readFileSync(sshds[2].logFile, "utf8");
  const req = request("k", [hosts.hosts[0].address, hosts.hosts[2].address]);
  const err = await sshAllocator.allocate(req).then(
    () => new Error("allocated"),
    (e: Error) => e,
  );
  expect(err.message).toContain(
    `ssh root@${hosts.hosts[2].address}:22: the host's key does not match the key pinned for it in allocation.ssh.knownHostsFile (${settings.knownHostsFile})`,
  );
  expect(err.message).toMatch(/refused before running anything/);
  // Host 2's sshd saw no login at all; host 0's agent was stopped again.
  expect(fs.readFileSync(sshds[2].logFile, "utf8").slice(before.length)).not.toMatch(/Accepted publickey/);
  expect(leftovers()).toEqual([]);
  expect(fs.existsSync(req.clusterDir)).toBe(false);
  expect(fs.readdirSync(settings.stateDir!)).toEqual([]);
  await onlySshdInHosts();
});

test("a wrong user or a wrong key is refused with an error naming the field, and nothing is left", async () => {
  const cases: [string, SshSettings, RegExp][] = [
    ["user", { ...settings, user: "nobody" }, /key authentication refused for allocation\.ssh\.user nobody with allocation\.ssh\.identityFile .*id_ed25519/],
    [
      "key",
      { ...settings, identityFile: wrongKeyFile },
      /key authentication refused for allocation\.ssh\.user root with allocation\.ssh\.identityFile .*other_ed25519/,
    ],
    ["missing key", { ...settings, identityFile: path.join(dir, "absent") }, /allocation\.ssh\.identityFile: cannot read .*absent/],
  ];
  for (const [name, s, expected] of cases) {
    const req = request(`w-${name.replace(" ", "-")}`, [hosts.hosts[0].address], s);
    const err = await sshAllocator.allocate(req).then(
      () => new Error("allocated"),
      (e: Error) => e,
    );
    expect([name, err.message]).toEqual([name, expect.stringMatching(expected)]);
    expect(fs.existsSync(req.clusterDir)).toBe(false);
  }
  expect(leftovers()).toEqual([]);
  expect(fs.existsSync(settings.stateDir!) ? fs.readdirSync(settings.stateDir!) : []).toEqual([]);
  await onlySshdInHosts();
});

test("stopping the sshds and tearing the hosts down leaves no namespace, link or process", async () => {
  for (const s of sshds) await s.stop();
  await tearDownNetnsHosts(TAG);
  expect(await netnsLeftovers(TAG)).toEqual({ netns: [], links: [] });
  expect(processesUnder(dir)).toEqual([]);
});
