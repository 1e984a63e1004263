// `vse status`: what a stack's virtual clusters are doing now. The stack's state
// (Automation API, `pulumi stack export --show-secrets`) says which clusters,
// agents and VMs there are and holds the agents' token; each agent is then asked
// for its VMs (GET /v1/vms). An agent that does not answer makes its VMs
// "agent unreachable", never an error.
import * as fs from "fs";
import * as path from "path";
import type { VmView } from "../agent/protocol";

export const AGENT_UNREACHABLE = "agent unreachable";

export interface AgentStatus {
  host: number;
  url: string;
  pid: number | null;
  reachable: boolean;
  /** Why the agent did not answer. */
  error?: string;
}

export interface VmStatusRow {
  vm: string;
  host: number | null;
  hypervisor: string;
  /** The agent's observed state (starting, running, exited, failed, stopped), "missing" when the agent does not hold the VM, or "agent unreachable". */
  state: string;
  pid: number | null;
  /** warm or cold: the VM's `launch` output when it has one, else cold. */
  launch: string;
  /** waiting or done; null when unknown. */
  job: string | null;
  exitCode: number | null;
  /** The first line of the job's output. */
  output: string | null;
  /** When the VM's current process started (ISO 8601), from the agent. */
  startedAt: string | null;
  /** Seconds since startedAt while the VM runs. */
  upSeconds: number | null;
  /** True for a VM an agent holds that the stack does not declare. */
  unmanaged?: boolean;
}

export interface ClusterStatus {
  cluster: string;
  clusterKey: string | null;
  agents: AgentStatus[];
  vms: VmStatusRow[];
}

export interface StackStatus {
  stack: string;
  /** When the agents were asked (ISO 8601). */
  at: string;
  clusters: ClusterStatus[];
}

/** One resource of a deployment, as `pulumi stack export` writes it. */
export interface DeploymentResource {
  urn: string;
  type: string;
  outputs?: Record<string, unknown>;
}

/** What the stack's state says: per cluster its agents and token, and its VMs' recorded outputs. */
export interface StackState {
  clusters: {
    name: string;
    clusterKey: string | null;
    token: string | null;
    /** The cluster CA's certificate when its agents serve HTTPS. */
    ca?: string | null;
    agents: { host: number; url: string; pid: number | null; stateDir: string }[];
  }[];
  vms: { name: string; cluster: string; host: number | null; hypervisor: string; launch: string; status: string | null }[];
}

/** vse:VirtualCluster or vse:VirtualMachine from a resource's type (pulumi-nodejs:dynamic/vse:VirtualMachine), or from its URN and outputs. */
export function vseResourceKind(r: DeploymentResource): "VirtualCluster" | "VirtualMachine" | undefined {
  const lastType = r.urn.split("::")[2]?.split("$").pop() ?? "";
  for (const t of [r.type, lastType]) {
    if (t.endsWith("vse:VirtualCluster")) return "VirtualCluster";
    if (t.endsWith("vse:VirtualMachine")) return "VirtualMachine";
  }
  if (r.type !== "pulumi-nodejs:dynamic:Resource" || !r.outputs) return undefined;
  if ("agents" in r.outputs && "clusterKey" in r.outputs) return "VirtualCluster";
  if ("vmName" in r.outputs && "agentUrl" in r.outputs) return "VirtualMachine";
  return undefined;
}

/** A secret as `stack export --show-secrets` gives it ({plaintext: JSON}), or plain; undefined while still encrypted. */
export function revealSecret(v: unknown): unknown {
  if (v && typeof v === "object" && "4dabf18193072939515e22adb298388d" in v) {
    const s = v as { plaintext?: string };
    return s.plaintext === undefined ? undefined : JSON.parse(s.plaintext);
  }
  return v;
}

export function stackStateOf(resources: DeploymentResource[]): StackState {
  const state: StackState = { clusters: [], vms: [] };
  for (const r of resources) {
    const o = r.outputs ?? {};
    const kind = vseResourceKind(r);
    if (kind === "VirtualCluster") {
      const agents = ((revealSecret(o.agents) as StackState["clusters"][number]["agents"]) ?? []).map((a) => ({
        host: a.host,
        url: a.url,
        pid: a.pid ?? null,
        stateDir: a.stateDir,
      }));
      let token = revealSecret(o.token);
      // Still encrypted: each agent keeps the token beside its state (0600, this user's).
      if (typeof token !== "string") token = agents.map((a) => readToken(a.stateDir)).find((t) => t !== undefined);
      state.clusters.push({
        name: String(o.name ?? r.urn.split("::").pop()),
        clusterKey: typeof o.clusterKey === "string" ? o.clusterKey : null,
        token: typeof token === "string" ? token : null,
        ca: typeof o.ca === "string" ? o.ca : null,
        agents,
      });
    } else if (kind === "VirtualMachine") {
      state.vms.push({
        name: String(o.vmName ?? r.urn.split("::").pop()),
        cluster: String(o.cluster ?? ""),
        host: typeof o.host === "number" ? o.host : null,
        hypervisor: String(o.hypervisor ?? ""),
        launch: typeof o.launch === "string" ? o.launch : "cold",
        status: typeof o.status === "string" ? o.status : null,
      });
    }
  }
  return state;
}

function readToken(stateDir: string | undefined): string | undefined {
  if (!stateDir) return undefined;
  try {
    return fs.readFileSync(path.join(stateDir, "token"), "utf8").trim();
  } catch {
    return undefined;
  }
}

/** Asks an agent for its VMs: the views, or why it did not answer. */
export type AskAgent = (url: string, token: string, ca?: string | null) => Promise<VmView[]>;

export const askAgent: AskAgent = async (url, token, ca) => {
  const { agentClient } = require("../allocation/allocator") as typeof import("../allocation/allocator");
  const res = await agentClient(url, token, ca).request<{ vms: VmView[] }>("GET", "/v1/vms", undefined, 3000);
  return res.vms;
};

/** Joins the stack's state with what the agents say now. */
export async function liveStatus(stack: string, state: StackState, ask: AskAgent = askAgent, now = new Date()): Promise<StackStatus> {
  const clusters: ClusterStatus[] = [];
  for (const c of state.clusters) {
    const answers = await Promise.all(
      c.agents.map(async (a) => {
        if (!c.token) return { a, error: "no token for this cluster in the stack's state" };
        try {
          return { a, views: await ask(a.url, c.token, c.ca) };
        } catch (err) {
          return { a, error: (err as Error).message };
        }
      }),
    );
    const agents: AgentStatus[] = answers.map(({ a, error }) => ({ host: a.host, url: a.url, pid: a.pid, reachable: !error, ...(error ? { error } : {}) }));
    const viewOf = new Map<string, { host: number; view: VmView }>();
    for (const ans of answers) for (const view of ans.views ?? []) viewOf.set(view.name, { host: ans.a.host, view });
    const reachable = new Map(agents.map((a) => [a.host, a.reachable]));
    const rows: VmStatusRow[] = [];
    for (const vm of state.vms.filter((v) => v.cluster === c.name)) {
      const live = viewOf.get(vm.name);
      viewOf.delete(vm.name);
      if (live) rows.push(rowOf(live.view, live.host, vm.launch, now));
      else {
        const state = vm.host !== null && reachable.get(vm.host) === false ? AGENT_UNREACHABLE : "missing";
        rows.push({ ...emptyRow(vm.name, vm.host, vm.hypervisor, vm.launch), state });
      }
    }
    for (const [, live] of viewOf) rows.push({ ...rowOf(live.view, live.host, "cold", now), unmanaged: true });
    rows.sort((x, y) => x.vm.localeCompare(y.vm, "en", { numeric: true }));
    clusters.push({ cluster: c.name, clusterKey: c.clusterKey, agents, vms: rows });
  }
  return { stack, at: now.toISOString(), clusters };
}

function emptyRow(vm: string, host: number | null, hypervisor: string, launch: string): VmStatusRow {
  return { vm, host, hypervisor, state: "missing", pid: null, launch, job: null, exitCode: null, output: null, startedAt: null, upSeconds: null };
}

function rowOf(v: VmView, host: number, launch: string, now: Date): VmStatusRow {
  const running = v.observed.state === "running" || v.observed.state === "starting";
  const startedAt = v.observed.startedAt ?? null;
  return {
    vm: v.name,
    host,
    hypervisor: v.spec?.hypervisor ?? "",
    state: v.observed.state,
    pid: v.observed.pid ?? null,
    launch,
    job: v.job?.state ?? null,
    exitCode: v.job?.exitCode ?? null,
    output: v.job?.state === "done" ? (v.job.output ?? "").split("\n")[0] : null,
    startedAt,
    upSeconds: running && startedAt ? Math.max(0, Math.round((now.getTime() - Date.parse(startedAt)) / 1000)) : null,
  };
}

/** 75 → "1m15s", 3725 → "1h02m", 2 days → "2d03h". */
export function formatUptime(seconds: number | null): string {
  if (seconds === null) return "-";
  const s = Math.floor(seconds);
  const pad = (n: number) => String(n).padStart(2, "0");
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${pad(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d${pad(Math.floor((s % 86400) / 3600))}h`;
}

const HEADERS = ["VM", "HOST", "HYPERVISOR", "STATE", "PID", "LAUNCH", "JOB", "EXIT", "OUTPUT", "UP"];
const MAX_OUTPUT = 40;

function cells(r: VmStatusRow): string[] {
  const dash = (v: unknown) => (v === null || v === undefined || v === "" ? "-" : String(v));
  const output = r.output === null ? "-" : r.output.length > MAX_OUTPUT ? r.output.slice(0, MAX_OUTPUT - 1) + "…" : r.output || '""';
  return [
    r.vm + (r.unmanaged ? " (not in stack)" : ""),
    dash(r.host),
    dash(r.hypervisor),
    r.state,
    dash(r.pid),
    r.launch,
    dash(r.job),
    dash(r.exitCode),
    output,
    formatUptime(r.upSeconds),
  ];
}

/** One table per cluster, columns padded to their widest cell. */
export function formatStatusText(s: StackStatus): string {
  if (!s.clusters.length) return `stack ${s.stack}: no virtual clusters\n`;
  const parts: string[] = [];
  for (const c of s.clusters) {
    const agents = c.agents.map((a) => `host ${a.host} ${a.reachable ? "ok" : "unreachable"}`).join(", ");
    const lines = [`cluster ${c.cluster} (stack ${s.stack}; agents: ${agents || "none"})`];
    const rows = [HEADERS, ...c.vms.map(cells)];
    const widths = HEADERS.map((_, i) => Math.max(...rows.map((r) => r[i].length)));
    for (const r of rows) lines.push(r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]))).join("  "));
    if (!c.vms.length) lines.push("(no VMs)");
    for (const a of c.agents.filter((x) => !x.reachable)) lines.push(`host ${a.host}: ${a.error}`);
    parts.push(lines.join("\n"));
  }
  return parts.join("\n\n") + "\n";
}

export interface StatusOptions {
  stack: string;
  format: "text" | "json";
  watch: boolean;
  /** The Pulumi project directory. */
  workDir: string;
  env: Record<string, string>;
}

/** Reads the stack's state through the Automation API (secrets shown: the agents' token). */
export async function readStackState(stackName: string, env: Record<string, string>, workDir: string): Promise<StackState> {
  const { LocalWorkspace, PulumiCommand } = await import("@pulumi/pulumi/automation");
  const { engineBinDir } = require("./engine") as typeof import("./engine");
  const pulumiCommand = await PulumiCommand.get({ root: path.dirname(engineBinDir()), skipVersionCheck: true });
  const stack = await LocalWorkspace.selectStack({ stackName, workDir }, { envVars: env, pulumiCommand });
  // LocalWorkspace.exportStack runs `pulumi stack export --show-secrets`.
  const deployment = await stack.exportStack();
  return stackStateOf((deployment.deployment?.resources ?? []) as DeploymentResource[]);
}

const CLEAR = "\x1b[H\x1b[2J";
/** How often --watch re-reads the stack's state (agents are asked every second). */
const STATE_EVERY_MS = 10000;

export async function runStatus(o: StatusOptions, write: (text: string) => void, deps: { read?: typeof readStackState; ask?: AskAgent } = {}): Promise<number> {
  const read = deps.read ?? readStackState;
  const render = (s: StackStatus) => (o.format === "json" ? JSON.stringify(s, null, 2) + "\n" : formatStatusText(s));
  let state = await read(o.stack, o.env, o.workDir);
  if (!o.watch) {
    write(render(await liveStatus(o.stack, state, deps.ask)));
    return 0;
  }
  let stopped = false;
  let wake: () => void = () => undefined;
  const stop = () => {
    stopped = true;
    wake();
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  try {
    let readAt = Date.now();
    while (!stopped) {
      if (Date.now() - readAt >= STATE_EVERY_MS) {
        state = await read(o.stack, o.env, o.workDir).catch(() => state);
        readAt = Date.now();
      }
      const s = await liveStatus(o.stack, state, deps.ask);
      if (stopped) break;
      write(CLEAR + render(s) + (o.format === "text" ? `\n${s.at}  every 1 s; Ctrl-C to stop\n` : ""));
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 1000);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  } finally {
    process.removeListener("SIGINT", stop);
    process.removeListener("SIGTERM", stop);
  }
  return 0;
}
