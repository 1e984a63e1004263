// The `ssh` allocation manager (issue 10; seed 000: "some only use SSH to
// access compute nodes"): hosts declared by address, each host's agent started
// over SSH and then reached over TLS like a static host's (allocation/static.ts).
//
// SSH is used with key authentication only and a pinned host key: BatchMode,
// no password or keyboard-interactive, IdentitiesOnly with the declared key,
// no agent, StrictHostKeyChecking=yes against the declared known-hosts file
// only (never accept-new), and no user or system ssh_config (-F none). The
// remote side runs this very file (compiled) as a small bootstrap at the same
// path as here (`node <dist>/provider/allocation/ssh.js start|stop|terminate
// …`), with the secrets on stdin: the cluster token, the CA certificate, and
// the host's server certificate and key, made by the controller for the host's
// address and never written to the host by any shared-filesystem path. The
// remote command is a shell command line (sshd runs it through the user's
// shell): it is built only from validated values, each one quoted by
// shellQuote. The agent's state lives on the host under ssh.stateDir.
//
// Release: the agent is asked to shut down over TLS, then the bootstrap's
// `stop` runs over SSH: it ends the agent if it did not answer, lets the
// agent's own code stop what it left (as for local agents), and removes the
// state directory. Both steps are tried for every host; failures are reported
// together.
import * as crypto from "crypto";
import * as fs from "fs";
import * as path from "path";
import { AgentClient } from "../agent/client";
import { TOKEN_PATTERN } from "../agent/protocol";
import type { Allocator, AllocationRequest } from "./allocator";
import { AgentLaunch, AgentRecord, stopAgent, terminateLocalAgent } from "./local";
import { DEFAULT_AGENT_PORT, StaticAgentRecord, clusterCa, startTlsAgent, staticClient } from "./static";
import { checkListenAddress, issueServerCert } from "./tls";

/** The ssh block of an allocation (schema: allocation.ssh). */
export interface SshSettings {
  /** The remote user (a POSIX user name). */
  user: string;
  /** sshd's port on every host. */
  port?: number;
  /** The private key to authenticate with (absolute path, readable here). */
  identityFile: string;
  /** The only known-hosts file consulted: it pins each host's key. */
  knownHostsFile: string;
  /** Where agents keep their state on the hosts (absolute path on the hosts). */
  stateDir?: string;
  /** Seconds ssh waits for a connection. */
  connectTimeoutSeconds?: number;
}

/** An SSH host's agent: stateDir is the path on that host; sshPort the port it was started through. */
export interface SshAgentRecord extends StaticAgentRecord {
  sshPort: number;
}

export const DEFAULT_SSH_PORT = 22;
export const DEFAULT_REMOTE_STATE_DIR = "/var/lib/vse/agents";
export const SSH_USER_PATTERN = /^[a-z_][a-z0-9_-]{0,31}$/;
/** Absolute paths of safe characters only: they end up in a remote shell command line (quoted, still). */
export const SSH_PATH_PATTERN = /^\/[A-Za-z0-9._+/-]{0,1023}$/;

// The bootstrap the remote host runs: this file compiled, also when this module is loaded from sources (ts-jest).
export const SSH_MAIN = __filename.endsWith(".ts") ? path.resolve(__dirname, "..", "..", "dist", "provider", "allocation", "ssh.js") : __filename;

/**
 * Quotes one argument for a POSIX shell (what sshd runs the command through):
 * the whole argument in single quotes, each single quote as '\''. Strict: only
 * printable ASCII (0x20 to 0x7e) is accepted; control characters, newlines,
 * NUL and non-ASCII are refused rather than quoted.
 */
export function shellQuote(arg: string): string {
  if (typeof arg !== "string") throw new Error(`shellQuote: expected a string, found ${typeof arg}`);
  const bad = /[^\x20-\x7e]/.exec(arg);
  if (bad) throw new Error(`shellQuote: refusing character U+${bad[0].charCodeAt(0).toString(16).padStart(4, "0")} in ${JSON.stringify(arg)}`);
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** A remote command line: every argument quoted, joined by spaces. */
export function shellCommand(argv: string[]): string {
  if (argv.length === 0) throw new Error("shellCommand: expected at least one argument");
  return argv.map(shellQuote).join(" ");
}

function checkPath(field: string, p: string): void {
  if (!SSH_PATH_PATTERN.test(p) || p.split("/").some((s) => s === "..") || p.includes("//"))
    throw new Error(`${field}: expected an absolute path of letters, digits and . _ + - / (no ..), found ${JSON.stringify(p)}`);
}

function checkPort(field: string, port: number): void {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`${field}: expected a port 1 to 65535, found ${port}`);
}

/** Checks the ssh block (errors name the field) and returns it with its defaults. */
export function checkSshSettings(s: SshSettings | undefined): Required<SshSettings> {
  if (!s) throw new Error("allocation.ssh: expected the ssh block (user, identityFile, knownHostsFile) for manager ssh");
  if (!SSH_USER_PATTERN.test(s.user ?? ""))
    throw new Error(`allocation.ssh.user: expected a user name (${SSH_USER_PATTERN.source}), found ${JSON.stringify(s.user)}`);
  const port = s.port ?? DEFAULT_SSH_PORT;
  checkPort("allocation.ssh.port", port);
  checkPath("allocation.ssh.identityFile", s.identityFile);
  checkPath("allocation.ssh.knownHostsFile", s.knownHostsFile);
  const stateDir = s.stateDir ?? DEFAULT_REMOTE_STATE_DIR;
  checkPath("allocation.ssh.stateDir", stateDir);
  const connectTimeoutSeconds = s.connectTimeoutSeconds ?? 15;
  if (!Number.isInteger(connectTimeoutSeconds) || connectTimeoutSeconds < 1 || connectTimeoutSeconds > 300)
    throw new Error(`allocation.ssh.connectTimeoutSeconds: expected 1 to 300, found ${connectTimeoutSeconds}`);
  return { user: s.user, port, identityFile: s.identityFile, knownHostsFile: s.knownHostsFile, stateDir, connectTimeoutSeconds };
}

/** The files the ssh block names must be here before anything is dialled. */
function checkSshFiles(s: Required<SshSettings>): void {
  for (const [field, file] of [
    ["allocation.ssh.identityFile", s.identityFile],
    ["allocation.ssh.knownHostsFile", s.knownHostsFile],
  ] as const) {
    try {
      fs.accessSync(file, fs.constants.R_OK);
      if (!fs.statSync(file).isFile()) throw new Error("not a regular file");
    } catch (err) {
      throw new Error(`${field}: cannot read ${file}: ${(err as Error).message}`);
    }
  }
}

/** ssh's argument array for one remote command on address: key authentication only, the host key pinned. */
export function sshArgv(s: Required<SshSettings>, address: string, command: string): string[] {
  checkListenAddress(address);
  return [
    "-F",
    "none",
    "-T",
    "-o",
    "BatchMode=yes",
    "-o",
    "PasswordAuthentication=no",
    "-o",
    "KbdInteractiveAuthentication=no",
    "-o",
    "PubkeyAuthentication=yes",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "IdentityAgent=none",
    "-o",
    "StrictHostKeyChecking=yes",
    "-o",
    `UserKnownHostsFile=${s.knownHostsFile}`,
    "-o",
    "GlobalKnownHostsFile=/dev/null",
    "-o",
    "UpdateHostKeys=no",
    "-o",
    "ForwardAgent=no",
    "-o",
    "ForwardX11=no",
    "-o",
    "ClearAllForwardings=yes",
    "-o",
    `ConnectTimeout=${s.connectTimeoutSeconds}`,
    "-o",
    "LogLevel=ERROR",
    "-i",
    s.identityFile,
    "-p",
    String(s.port),
    "-l",
    s.user,
    "--",
    address,
    command,
  ];
}

/** What ssh's own failure (exit 255) means, in the definition's terms. */
export function explainSshFailure(s: Required<SshSettings>, address: string, stderr: string): string {
  const said = stderr.trim().split("\n").slice(-4).join(" | ");
  const where = `${s.user}@${address}:${s.port}`;
  if (/Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|host key is known|Host key for .* has changed/i.test(stderr))
    return `ssh ${where}: the host's key does not match the key pinned for it in allocation.ssh.knownHostsFile (${s.knownHostsFile}); refused before running anything on it (ssh: ${said})`;
  if (/Permission denied|Too many authentication failures|no mutual signature|Load key .*: /i.test(stderr))
    return `ssh ${where}: key authentication refused for allocation.ssh.user ${s.user} with allocation.ssh.identityFile ${s.identityFile} (ssh: ${said})`;
  if (/Connection refused|timed out|No route to host|Network is unreachable|Connection closed|Connection reset/i.test(stderr))
    return `ssh ${where}: cannot reach the host's sshd (ssh: ${said})`;
  return `ssh ${where}: ssh failed (ssh: ${said || "no message"})`;
}

/** Runs one command on a host over SSH, stdin as given; ssh's own failures are explained, the command's are reported with its stderr. */
export async function sshRun(s: Required<SshSettings>, address: string, argv: string[], input = ""): Promise<string> {
  const execa = require("execa") as typeof import("execa");
  checkSshFiles(s);
  const r = await execa("ssh", sshArgv(s, address, shellCommand(argv)), { input, reject: false, timeout: 120000 });
  if (r.timedOut) throw new Error(`ssh ${s.user}@${address}:${s.port}: no answer within 120 s`);
  if (r.exitCode === 255) throw new Error(explainSshFailure(s, address, r.stderr));
  if (r.exitCode !== 0)
    throw new Error(`on ${address}: ${argv[2] ?? argv[0]} failed (exit ${r.exitCode}): ${r.stderr.trim().split("\n").slice(-5).join("\n")}`);
  return r.stdout;
}

/** Where host i's agent keeps its state on the host. */
export function remoteStateDir(s: Required<SshSettings>, clusterKey: string, host: number): string {
  if (!/^[0-9a-f]{10}$/.test(clusterKey)) throw new Error(`cluster key: expected 10 hex digits, found ${JSON.stringify(clusterKey)}`);
  return path.posix.join(s.stateDir, `vse-${clusterKey}`, `host-${host}`);
}

/** The bootstrap's command line (node and this file at the same paths on the host as here). */
function bootstrapArgv(verb: "start" | "stop" | "terminate", opts: Record<string, string>): string[] {
  checkPath("node", process.execPath);
  checkPath("bootstrap", SSH_MAIN);
  const argv = [process.execPath, SSH_MAIN, verb];
  for (const [k, v] of Object.entries(opts)) argv.push(`--${k}`, v);
  return argv;
}

function launchOpts(launch: AgentLaunch, stateDir: string): Record<string, string> {
  checkPath("state directory", stateDir);
  checkPath("image store", launch.imageStore);
  if (launch.policyFile) checkPath("policy file", launch.policyFile);
  if (!/^[0-9a-f]{10}$/.test(launch.clusterKey)) throw new Error(`cluster key: expected 10 hex digits, found ${JSON.stringify(launch.clusterKey)}`);
  return {
    "state-dir": stateDir,
    "cluster-key": launch.clusterKey,
    "image-store": launch.imageStore,
    ...(launch.policyFile ? { policy: launch.policyFile } : {}),
  };
}

/**
 * Starts the agent of one host over SSH: a server certificate for its address
 * is issued here (in a private scratch directory, removed afterwards), sent
 * with the token on the SSH connection's stdin, and the host's bootstrap
 * starts the agent; then it must answer here over TLS, the CA pinned, with
 * the pid the host reported.
 */
export async function startSshAgent(
  clusterDir: string,
  launch: AgentLaunch,
  settings: SshSettings,
  host: number,
  address: string,
  port = DEFAULT_AGENT_PORT,
): Promise<SshAgentRecord> {
  const s = checkSshSettings(settings);
  checkListenAddress(address);
  checkPort("allocation.port", port);
  const stateDir = remoteStateDir(s, launch.clusterKey, host);
  const ca = await clusterCa(clusterDir, launch.clusterKey);
  const scratch = fs.mkdtempSync(path.join(clusterDir, `.ssh-host-${host}-`));
  let payload: string;
  try {
    fs.chmodSync(scratch, 0o700);
    const cert = await issueServerCert(ca, address, scratch);
    payload = JSON.stringify({ token: launch.token, ca: ca.cert, cert: fs.readFileSync(cert.certFile, "utf8"), key: fs.readFileSync(cert.keyFile, "utf8") });
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
  const argv = bootstrapArgv("start", { ...launchOpts(launch, stateDir), host: String(host), listen: `${address}:${port}` });
  const out = await sshRun(s, address, argv, payload);
  let started: StaticAgentRecord;
  try {
    started = JSON.parse(out.trim().split("\n").pop() ?? "") as StaticAgentRecord;
  } catch {
    throw new Error(`on ${address}: the bootstrap did not report the agent it started: ${JSON.stringify(out.slice(-200))}`);
  }
  const rec: SshAgentRecord = { ...started, host, address, port, stateDir, sshPort: s.port };
  const health = await staticClient(rec, launch.token, ca.cert).health();
  if (!health.ok || health.pid !== rec.pid) throw new Error(`on ${address}: pid ${health.pid} answers on ${rec.url}, not the agent started (pid ${rec.pid})`);
  return rec;
}

/** Whether the agent answers over TLS (CA pinned) as the recorded process. */
export async function sshAgentHealthy(a: SshAgentRecord, token: string, caPem: string): Promise<boolean> {
  try {
    const h = await staticClient(a, token, caPem).health();
    return h.ok === true && h.pid === a.pid;
  } catch {
    return false;
  }
}

/**
 * Stops one host's agent and every VM it runs, and removes its state on the
 * host: asked over TLS first; then, over SSH, the bootstrap's `stop` ends the
 * agent if it still runs, has the agent's own code stop what it left, and
 * removes the state directory. Both run; errors are reported together.
 */
export async function stopSshAgent(a: SshAgentRecord, launch: AgentLaunch, settings: SshSettings, caPem: string): Promise<void> {
  const s = { ...checkSshSettings(settings), port: a.sshPort };
  const errors: string[] = [];
  let client: AgentClient | undefined;
  try {
    client = staticClient(a, launch.token, caPem);
    await client.shutdown();
  } catch {
    // Not answering (dead, or the host unreachable over TLS): the SSH step does it.
  }
  try {
    await sshRun(
      s,
      a.address,
      bootstrapArgv("stop", { ...launchOpts(launch, a.stateDir), host: String(a.host), pid: String(a.pid) }),
      JSON.stringify({ token: launch.token }),
    );
  } catch (err) {
    errors.push((err as Error).message);
  }
  if (errors.length) throw new Error(`could not stop everything of host ${a.host} (${a.address}): ${errors.join("; ")}`);
}

/** Ends the agent process on the host over SSH but not its VMs, and starts a new one on the same state (it re-attaches to them). */
export async function restartSshAgent(clusterDir: string, a: SshAgentRecord, launch: AgentLaunch, settings: SshSettings): Promise<SshAgentRecord> {
  const s = { ...checkSshSettings(settings), port: a.sshPort };
  await sshRun(s, a.address, bootstrapArgv("terminate", { "state-dir": a.stateDir, pid: String(a.pid) }));
  return startSshAgent(clusterDir, launch, s, a.host, a.address, a.port);
}

/** Starts the agents of every host (in parallel). All or nothing: when one fails, those started are stopped before the error is thrown. */
export async function startSshCluster(
  clusterDir: string,
  launch: AgentLaunch,
  addresses: string[],
  settings: SshSettings,
  port = DEFAULT_AGENT_PORT,
): Promise<{ ca: string; agents: SshAgentRecord[] }> {
  const s = checkSshSettings(settings);
  checkSshFiles(s);
  const seen = new Set<string>();
  addresses.forEach((a, i) => {
    try {
      checkListenAddress(a);
    } catch (err) {
      throw new Error(`allocation.hosts[${i}]: ${(err as Error).message}`);
    }
    if (seen.has(a)) throw new Error(`allocation.hosts[${i}]: address ${a} is declared twice`);
    seen.add(a);
  });
  const made = !fs.existsSync(clusterDir);
  const ca = await clusterCa(clusterDir, launch.clusterKey);
  const results = await Promise.allSettled(addresses.map((a, i) => startSshAgent(clusterDir, launch, s, i, a, port)));
  const agents = results.filter((r): r is PromiseFulfilledResult<SshAgentRecord> => r.status === "fulfilled").map((r) => r.value);
  const failed = results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => (r.reason as Error).message);
  if (failed.length) {
    const cleanup = await Promise.allSettled(agents.map((a) => stopSshAgent(a, launch, s, ca.cert)));
    const left = cleanup.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => (r.reason as Error).message);
    if (made) fs.rmSync(clusterDir, { recursive: true, force: true });
    throw new Error([...failed, ...left.map((m) => `and while undoing: ${m}`)].join("\n"));
  }
  return { ca: ca.cert, agents };
}

/** Stops every agent (all tried, failures reported together), then removes the cluster's directory here (its CA). */
export async function stopSshCluster(clusterDir: string, agents: SshAgentRecord[], launch: AgentLaunch, settings: SshSettings, caPem: string): Promise<void> {
  const results = await Promise.allSettled(agents.map((a) => stopSshAgent(a, launch, settings, caPem)));
  const failed = results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => (r.reason as Error).message);
  if (failed.length) throw new Error(failed.join("\n"));
  fs.rmSync(clusterDir, { recursive: true, force: true });
}

/** The ssh block and the declared addresses of a request (hosts by address only: an SSH host's namespace is wherever its sshd runs). */
function sshRequest(req: AllocationRequest): { settings: SshSettings; addresses: string[]; port: number } {
  const a = req.allocation as AllocationRequest["allocation"] & { ssh?: SshSettings; hostList?: { address: string; netns?: string }[]; port?: number };
  if (!a.hostList) throw new Error("allocation.hosts: manager ssh expects a list of hosts ({ address: <IPv4> } each)");
  a.hostList.forEach((h, i) => {
    if (h.netns !== undefined) throw new Error(`allocation.hosts[${i}].netns: not for manager ssh (the agent runs wherever the host's sshd runs)`);
  });
  return { settings: checkSshSettings(a.ssh), addresses: a.hostList.map((h) => h.address), port: a.port ?? DEFAULT_AGENT_PORT };
}

export const sshAllocator: Allocator = {
  async allocate(req) {
    const r = sshRequest(req);
    const { ca, agents } = await startSshCluster(req.clusterDir, req.launch, r.addresses, r.settings, r.port);
    return { agents, ca, info: { sshHosts: r.addresses.join(" "), sshUser: r.settings.user } };
  },
  healthy: (req, state, agent) => sshAgentHealthy(agent as SshAgentRecord, req.launch.token, state.ca ?? ""),
  restartAgent: (req, _state, agent) => restartSshAgent(req.clusterDir, agent as SshAgentRecord, req.launch, sshRequest(req).settings),
  release: (req, state) => stopSshCluster(req.clusterDir, state.agents as SshAgentRecord[], req.launch, sshRequest(req).settings, state.ca ?? ""),
};

// --- The bootstrap, run on the host: node ssh.js start|stop|terminate --opt value … -----------------

function bootstrapArg(name: string, required = true): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? process.argv[i + 1] : undefined;
  if (required && v === undefined) throw new Error(`--${name}: missing`);
  return v;
}

function readStdin(): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    process.stdin.on("data", (c: Buffer) => chunks.push(c));
    process.stdin.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    process.stdin.on("error", reject);
  });
}

function bootstrapLaunch(token: string): AgentLaunch {
  if (!TOKEN_PATTERN.test(token)) throw new Error("stdin: expected the cluster token (vse1.<key>.<hex>)");
  const clusterKey = bootstrapArg("cluster-key")!;
  if (!/^[0-9a-f]{10}$/.test(clusterKey) || !token.startsWith(`vse1.${clusterKey}.`)) throw new Error(`--cluster-key: expected the token's 10 hex digits`);
  const imageStore = bootstrapArg("image-store")!;
  checkPath("--image-store", imageStore);
  const policyFile = bootstrapArg("policy", false);
  if (policyFile) checkPath("--policy", policyFile);
  return { token, clusterKey, imageStore, ...(policyFile ? { policyFile } : {}) };
}

async function bootstrap(verb: string): Promise<void> {
  const stateDir = bootstrapArg("state-dir")!;
  checkPath("--state-dir", stateDir);
  const pid = Number(bootstrapArg("pid", verb !== "start") ?? 0);
  if (!Number.isInteger(pid) || pid < 0) throw new Error("--pid: expected a process id");
  if (verb === "terminate") {
    await terminateLocalAgent({ host: 0, url: `unix:${path.join(stateDir, "agent.sock")}`, pid, stateDir });
    return;
  }
  const input = JSON.parse(await readStdin()) as { token: string; ca?: string; cert?: string; key?: string };
  const launch = bootstrapLaunch(input.token);
  const host = Number(bootstrapArg("host"));
  if (verb === "start") {
    const m = /^([0-9.]{7,15}):([0-9]{1,5})$/.exec(bootstrapArg("listen")!);
    if (!m) throw new Error("--listen: expected <IPv4 address>:<port>");
    for (const k of ["ca", "cert", "key"] as const)
      if (typeof input[k] !== "string" || !input[k]!.includes("-----BEGIN ")) throw new Error(`stdin: expected ${k} (PEM)`);
    if (!new crypto.X509Certificate(input.cert!).checkIssued(new crypto.X509Certificate(input.ca!))) throw new Error("stdin: the certificate is not the CA's");
    const fresh = !fs.existsSync(stateDir);
    try {
      const rec = await startTlsAgent(stateDir, launch, input.ca!, host, { address: m[1] }, Number(m[2]), async (tlsDir) => {
        const { writeFileAtomic } = require("../agent/state") as typeof import("../agent/state");
        fs.mkdirSync(tlsDir, { recursive: true, mode: 0o700 });
        fs.chmodSync(tlsDir, 0o700);
        const certFile = path.join(tlsDir, "agent.pem");
        const keyFile = path.join(tlsDir, "agent.key");
        writeFileAtomic(keyFile, input.key!, 0o600);
        writeFileAtomic(certFile, input.cert!, 0o644);
        return { certFile, keyFile };
      });
      process.stdout.write(`${JSON.stringify(rec)}\n`);
    } catch (err) {
      // A first start that failed leaves nothing behind on the host (a restart keeps the state its VMs need).
      if (fresh) removeState(stateDir);
      throw err;
    }
    return;
  }
  if (verb === "stop") {
    const a: AgentRecord = { host, url: `unix:${path.join(stateDir, "agent.sock")}`, pid, stateDir };
    if (fs.existsSync(stateDir)) await stopAgent(a, launch.clusterKey, new AgentClient(a.url, launch.token), `host ${host}`);
    removeState(stateDir);
    return;
  }
  throw new Error(`expected start, stop or terminate, found ${JSON.stringify(verb)}`);
}

/** Removes a state directory and its cluster's directory above it once empty. */
function removeState(stateDir: string): void {
  fs.rmSync(stateDir, { recursive: true, force: true });
  try {
    fs.rmdirSync(path.dirname(stateDir));
  } catch {
    // other hosts' state still there (hosts sharing a filesystem), or already gone
  }
}

if (require.main === module) {
  bootstrap(process.argv[2] ?? "").then(
    () => process.exit(0),
    (err: Error) => {
      process.stderr.write(`vse ssh bootstrap ${process.argv[2] ?? ""}: ${err.message}\n`);
      process.exit(1);
    },
  );
}
