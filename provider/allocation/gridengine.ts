// The `gridengine` allocation manager (issue 10; seed 003 launches its VMs as
// Grid Engine job arrays), and the batch-job core the `torque` and `alps`
// managers share: the cluster's hosts are one batch job of `hosts` tasks, each
// task runs one node agent in the foreground (so the job lives exactly as long
// as its agent), and the controller waits for every agent to answer.
//
// The job script is generated here from validated values only (every value
// quoted by shellQuote, allocation/ssh.ts) and written into the spool
// directory (the cluster's directory unless allocation.<manager>.spoolDir),
// which the job's hosts must share with this machine: the token file (0600),
// the script, the job's output and each agent's state directory host-<i>/ live
// there. Agents serve on the unix socket of their state directory: the
// controller reaches them when the execution hosts are this machine (as in the
// tests, against the real Grid Engine daemons); agents on other execution hosts
// would serve TLS as static hosts do, which needs their addresses before their
// certificates, and is not done yet.
//
// Commands run through execa with argument arrays: qsub -terse <script> (job
// id from its output), qstat -j <id> (exit 1 once the job is gone), qdel <id>.
// Release asks every agent to stop its VMs and exit (the tasks end), then
// qdel's what remains and waits until the scheduler no longer knows the job.
import * as fs from "fs";
import * as path from "path";
import type { Allocator, AllocationRequest, ClusterAgents } from "./allocator";
import { AGENT_MAIN, AgentLaunch, AgentRecord, agentHealthy, isAgentProcess, stopLocalAgent } from "./local";
import { shellCommand, shellQuote, SSH_PATH_PATTERN } from "./ssh";
import { readJson, writeFileAtomic } from "../agent/state";

/** The settings a batch manager's block holds (schema: allocation.gridengine / torque / alps). */
export interface BatchSettings {
  queue?: string;
  walltime?: string;
  account?: string;
  spoolDir?: string;
  /** Grid Engine only: a parallel environment instead of a job array. */
  parallelEnvironment?: string;
}

export const QUEUE_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/;
export const WALLTIME_PATTERN = /^([0-9]{1,4}):([0-5][0-9]):([0-5][0-9])$/;

/** Checks a batch block; errors name the field (allocation.<manager>.<field>). */
export function checkBatchSettings(manager: string, s: BatchSettings | undefined): BatchSettings {
  const b = s ?? {};
  const field = (f: string) => `allocation.${manager}.${f}`;
  for (const f of ["queue", "account", "parallelEnvironment"] as const) {
    const v = b[f];
    if (v !== undefined && !QUEUE_PATTERN.test(v))
      throw new Error(`${field(f)}: expected letters, digits, _ . - (up to 64, not starting with . or -), found ${JSON.stringify(v)}`);
  }
  if (b.parallelEnvironment !== undefined && manager !== "gridengine") throw new Error(`${field("parallelEnvironment")}: only for manager gridengine`);
  if (b.walltime !== undefined && !WALLTIME_PATTERN.test(b.walltime))
    throw new Error(`${field("walltime")}: expected HH:MM:SS (e.g. 01:30:00), found ${JSON.stringify(b.walltime)}`);
  if (b.spoolDir !== undefined && (!SSH_PATH_PATTERN.test(b.spoolDir) || b.spoolDir.split("/").includes("..")))
    throw new Error(`${field("spoolDir")}: expected an absolute path of letters, digits and . _ + - /, found ${JSON.stringify(b.spoolDir)}`);
  return b;
}

/** What a job script needs: the cluster, its hosts, the spool directory and how agents start. */
export interface BatchJob {
  clusterName: string;
  clusterKey: string;
  hosts: number;
  spoolDir: string;
  launch: Pick<AgentLaunch, "clusterKey" | "imageStore" | "policyFile">;
  settings: BatchSettings;
  /** node and the agent's main.js on the execution hosts (this machine's by default). */
  node?: string;
  agentMain?: string;
}

function checkJob(j: BatchJob): Required<Pick<BatchJob, "node" | "agentMain">> {
  if (!/^[0-9a-f]{10}$/.test(j.clusterKey)) throw new Error(`cluster key: expected 10 hex digits, found ${JSON.stringify(j.clusterKey)}`);
  if (!Number.isInteger(j.hosts) || j.hosts < 1 || j.hosts > 64) throw new Error(`allocation.hosts: expected 1 to 64, found ${j.hosts}`);
  const node = j.node ?? process.execPath;
  const agentMain = j.agentMain ?? AGENT_MAIN;
  for (const [f, p] of [
    ["spool directory", j.spoolDir],
    ["image store", j.launch.imageStore],
    ["node", node],
    ["agent", agentMain],
    ...(j.launch.policyFile ? [["policy file", j.launch.policyFile]] : []),
  ])
    if (!SSH_PATH_PATTERN.test(p) || p.split("/").includes(".."))
      throw new Error(`${f}: expected an absolute path of letters, digits and . _ + - /, found ${JSON.stringify(p)}`);
  return { node, agentMain };
}

/** The job's name: vse-<cluster key> (what qstat shows). */
export function jobName(clusterKey: string): string {
  return `vse-${clusterKey}`;
}

/**
 * The shell command one task runs: the agent in the foreground (exec), its
 * state directory host-<index> where index is the shell expression given
 * (e.g. $((SGE_TASK_ID - 1)), $PBS_VNODENUM, $ALPS_APP_PE): that part is the
 * only one not quoted, and it is ours, never the definition's.
 */
export function agentTaskCommand(j: BatchJob, indexExpr: "$((SGE_TASK_ID - 1))" | "$PBS_VNODENUM" | "$ALPS_APP_PE" | '"$1"'): string {
  const { node, agentMain } = checkJob(j);
  const extra = j.launch.policyFile ? ["--policy", j.launch.policyFile] : [];
  return [
    "exec",
    shellQuote(node),
    shellQuote(agentMain),
    "--state-dir",
    `${shellQuote(`${j.spoolDir}/host-`)}"${indexExpr}"`,
    shellCommand(["--token-file", `${j.spoolDir}/token`, "--cluster-key", j.clusterKey, "--image-store", j.launch.imageStore, ...extra]),
  ].join(" ");
}

/** Grid Engine's job script: a job array of hosts tasks (seed 003), or with a parallel environment one job that starts an agent per slot with qrsh -inherit. */
export function gridEngineScript(j: BatchJob): string {
  checkJob(j);
  const s = checkBatchSettings("gridengine", j.settings);
  const lines = [
    "#!/bin/sh",
    `# vse cluster ${j.clusterName} (${j.clusterKey}): one node agent per ${s.parallelEnvironment ? "slot" : "task"} (Grid Engine). Generated; do not edit.`,
    `#$ -N ${jobName(j.clusterKey)}`,
    "#$ -S /bin/sh",
    "#$ -j y",
    `#$ -o ${j.spoolDir}/output`,
    `#$ -wd ${j.spoolDir}`,
    s.parallelEnvironment ? `#$ -pe ${s.parallelEnvironment} ${j.hosts}` : `#$ -t 1-${j.hosts}`,
    ...(s.queue ? [`#$ -q ${s.queue}`] : []),
    ...(s.walltime ? [`#$ -l h_rt=${s.walltime}`] : []),
    ...(s.account ? [`#$ -P ${s.account}`] : []),
    "set -eu",
  ];
  if (s.parallelEnvironment) {
    // One agent per slot: the master task starts the others on their hosts (the PE needs control_slaves TRUE), then its own.
    lines.push(
      "i=0",
      "while read -r host slots rest; do",
      "  n=0",
      '  while [ "$n" -lt "$slots" ]; do',
      `    if [ "$i" -gt 0 ]; then qrsh -inherit -nostdin "$host" /bin/sh -c ${shellQuote(agentTaskCommand(j, '"$1"'))} agent "$i" & fi`,
      "    i=$((i + 1)); n=$((n + 1))",
      "  done",
      'done < "$PE_HOSTFILE"',
      `set -- 0`,
      agentTaskCommand(j, '"$1"'),
    );
  } else {
    lines.push(agentTaskCommand(j, "$((SGE_TASK_ID - 1))"));
  }
  return `${lines.join("\n")}\n`;
}

/** One command of a batch system: file and argument array (never a shell string). */
export interface Command {
  file: string;
  args: string[];
}

export const gridEngineCommands = {
  submit: (script: string): Command => ({ file: "qsub", args: ["-terse", script] }),
  /** Exit 0 while the scheduler knows the job, 1 once it is gone. */
  query: (jobId: string): Command => ({ file: "qstat", args: ["-j", checkJobId(jobId)] }),
  cancel: (jobId: string): Command => ({ file: "qdel", args: [checkJobId(jobId)] }),
  /** qsub -terse prints "<id>" or, for an array, "<id>.1-N:1". */
  parseJobId: (stdout: string): string => {
    const m = /^([0-9]{1,10})(\.[0-9]+-[0-9]+:[0-9]+)?$/.exec(stdout.trim());
    if (!m) throw new Error(`qsub: expected a job id, found ${JSON.stringify(stdout.trim().slice(0, 200))}`);
    return m[1];
  },
};

export function checkJobId(id: string): string {
  if (!/^[0-9]{1,10}(\.[A-Za-z0-9_.-]{1,64})?$/.test(id)) throw new Error(`job id: expected digits (and for PBS .<server>), found ${JSON.stringify(id)}`);
  return id;
}

/** A batch manager: its script and commands, and what to install when its commands are missing. */
export interface BatchFlavour {
  manager: string;
  script(j: BatchJob): string;
  commands: { submit(script: string): Command; query(jobId: string): Command; cancel(jobId: string): Command; parseJobId(stdout: string): string };
  /** Debian packages or product that provide the submit command. */
  install: string;
  /** Whether `<submit> -help`'s output shows the right product (a qsub of another batch system is refused). */
  identify?: (helpOutput: string) => string | undefined;
}

/** The command's path in PATH, or a clear error saying what to install. */
export function findCommand(manager: string, file: string, install: string, env = process.env): string {
  for (const dir of (env.PATH ?? "").split(":").filter((d) => d.startsWith("/"))) {
    const p = path.join(dir, file);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  throw new Error(
    `manager ${manager}: the command ${file} is not installed on this machine (not in PATH=${env.PATH ?? ""}); install ${install}, or submit from a host that has it`,
  );
}

async function run(c: Command, allowFail = false): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const execa = require("execa") as typeof import("execa");
  const r = await execa(c.file, c.args, { reject: false, timeout: 60000, stdin: "ignore" });
  if (!allowFail && r.exitCode !== 0) throw new Error(`${c.file} ${c.args.join(" ")}: exit ${r.exitCode}: ${(r.stderr || r.stdout).trim()}`);
  return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function spoolDirOf(req: AllocationRequest, s: BatchSettings): string {
  return s.spoolDir ? path.join(s.spoolDir, `vse-${req.clusterKey}`) : req.clusterDir;
}

/** Waits until the scheduler no longer knows the job. */
async function waitJobGone(f: BatchFlavour, jobId: string, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while ((await run(f.commands.query(jobId), true)).exitCode === 0) {
    if (Date.now() > end) throw new Error(`manager ${f.manager}: job ${jobId} is still known to the scheduler after qdel`);
    await sleep(500);
  }
}

/**
 * Submits the job and waits until every task's agent answers on its socket.
 * All or nothing: on failure (or when the job ends first) the job is deleted
 * and the spool removed.
 */
export async function allocateBatch(f: BatchFlavour, req: AllocationRequest, waitMs = 180000): Promise<ClusterAgents> {
  const settings = checkBatchSettings(f.manager, (req.allocation as unknown as Record<string, BatchSettings | undefined>)[f.manager]);
  const submit = findCommand(f.manager, f.commands.submit("x").file, f.install);
  if (f.identify) {
    const help = await run({ file: submit, args: ["-help"] }, true);
    const wrong = f.identify(`${help.stdout}\n${help.stderr}`);
    if (wrong) throw new Error(`manager ${f.manager}: ${submit} is ${wrong}; install ${f.install}, or put its qsub first in PATH`);
  }
  const spool = spoolDirOf(req, settings);
  const job: BatchJob = {
    clusterName: req.clusterName,
    clusterKey: req.clusterKey,
    hosts: req.allocation.hosts,
    spoolDir: spool,
    launch: req.launch,
    settings,
  };
  const script = f.script(job);
  fs.mkdirSync(path.join(spool, "output"), { recursive: true, mode: 0o700 });
  fs.chmodSync(spool, 0o700);
  writeFileAtomic(path.join(spool, "token"), req.launch.token, 0o600);
  const scriptFile = path.join(spool, "job.sh");
  writeFileAtomic(scriptFile, script, 0o700);
  let jobId: string | undefined;
  const agents: AgentRecord[] = [];
  try {
    const c = f.commands.submit(scriptFile);
    const out = await run({ file: submit, args: c.args });
    jobId = f.commands.parseJobId(out.stdout);
    const end = Date.now() + waitMs;
    for (let h = 0; h < req.allocation.hosts; h++) {
      const stateDir = path.join(spool, `host-${h}`);
      for (;;) {
        const info = readJson<{ pid: number; url: string }>(path.join(stateDir, "agent.json"));
        if (info && isAgentProcess(info.pid, stateDir)) {
          const a = { host: h, url: info.url, pid: info.pid, stateDir };
          if (await agentHealthy(a, req.launch.token)) {
            agents.push(a);
            break;
          }
        }
        if ((await run(f.commands.query(jobId), true)).exitCode !== 0)
          throw new Error(`manager ${f.manager}: job ${jobId} ended before the agent of host ${h} answered (output in ${path.join(spool, "output")})`);
        if (Date.now() > end)
          throw new Error(
            `manager ${f.manager}: the agent of host ${h} did not answer within ${waitMs / 1000} s (job ${jobId}, output in ${path.join(spool, "output")})`,
          );
        await sleep(250);
      }
    }
  } catch (err) {
    const state: ClusterAgents = { agents, ca: null, info: jobId ? { jobId } : {} };
    await releaseBatch(f, req, state).catch(() => undefined);
    throw err;
  }
  return { agents, ca: null, info: { [`${f.manager}JobId`]: jobId!, jobId: jobId! }, ref: `${f.manager}:${jobId!}` };
}

/** Stops every agent and its VMs (the tasks then end), deletes what remains of the job, waits until it is gone, removes the spool. */
export async function releaseBatch(f: BatchFlavour, req: AllocationRequest, state: ClusterAgents): Promise<void> {
  const errors: string[] = [];
  await Promise.all(state.agents.map((a) => stopLocalAgent(a, req.launch).catch((err: Error) => errors.push(err.message))));
  const jobId = state.info.jobId;
  if (jobId) {
    await run(f.commands.cancel(jobId), true);
    await waitJobGone(f, jobId, 60000).catch((err: Error) => errors.push(err.message));
  }
  if (errors.length) throw new Error(errors.join("\n"));
  const settings = checkBatchSettings(f.manager, (req.allocation as unknown as Record<string, BatchSettings | undefined>)[f.manager]);
  fs.rmSync(spoolDirOf(req, settings), { recursive: true, force: true });
  fs.rmSync(req.clusterDir, { recursive: true, force: true });
}

/** Whether the job is still known to the scheduler (refresh: a qdel outside Pulumi shows here). */
export async function batchStatus(f: BatchFlavour, state: ClusterAgents): Promise<{ active: boolean; reason?: string }> {
  const jobId = state.info.jobId;
  if (!jobId) return { active: false, reason: "no job id recorded" };
  const r = await run(f.commands.query(jobId), true);
  return r.exitCode === 0 ? { active: true } : { active: false, reason: `job ${jobId} is no longer known to ${f.manager}` };
}

/** The Allocator of a batch manager. */
export function batchAllocator(f: BatchFlavour): Allocator {
  return {
    allocate: (req) => allocateBatch(f, req),
    healthy: (req, _state, a) => agentHealthy(a, req.launch.token),
    async restartAgent(_req, state, a) {
      throw new Error(
        `manager ${f.manager}: the agent of host ${a.host} is a task of job ${state.info.jobId}; it cannot be restarted outside the job (destroy and create the cluster again)`,
      );
    },
    release: (req, state) => releaseBatch(f, req, state),
    status: (_req, state) => batchStatus(f, state),
    // With the job gone, so are its tasks' agents: a VM whose agent is gone learns why from the ref.
    async ended(id) {
      return (await run(f.commands.query(id), true)).exitCode === 0 ? undefined : `job ${id} is no longer known to ${f.manager}`;
    },
  };
}

export const gridEngineFlavour: BatchFlavour = {
  manager: "gridengine",
  script: gridEngineScript,
  commands: gridEngineCommands,
  install: "Grid Engine's client (Debian: apt-get install gridengine-client)",
  identify: (help) => (/^(SGE|GE|OGS|UGE|SoGE) [0-9]/m.test(help) ? undefined : "not Grid Engine's qsub (its -help does not name SGE)"),
};

export const gridEngineAllocator: Allocator = batchAllocator(gridEngineFlavour);
