// `vse accounting`: CPU time, memory and wall time of a stack's VMs, mapped to
// the physical host that ran them (agent host index, hostname, agent address)
// and the scheduler's job (the agent's own SLURM_JOB_ID and the like, else the
// cluster's allocation info). The stack's state says which agents there are
// (as for `vse status`); each is asked for its records (GET /v1/accounting),
// which outlive the VMs. An agent that does not answer is reported, never fatal.
import type { AccountingReport } from "../agent/accounting";
import { DeploymentResource, revealSecret, StackState, stackStateOf, vseResourceKind } from "./status";

export const ACCOUNTING_COLUMNS = [
  "cluster",
  "vm",
  "host",
  "hostname",
  "agent",
  "schedulerJobId",
  "pid",
  "state",
  "startedAt",
  "endedAt",
  "wallSeconds",
  "cpuSeconds",
  "vcpus",
  "memoryMiB",
  "peakRssMiB",
] as const;

export type AccountingRow = {
  cluster: string;
  vm: string;
  host: number | null;
  hostname: string;
  agent: string;
  schedulerJobId: string | null;
  pid: number;
  /** running while the process lives, else ended. */
  state: "running" | "ended";
  startedAt: string;
  endedAt: string | null;
  wallSeconds: number;
  cpuSeconds: number;
  vcpus: number | null;
  memoryMiB: number | null;
  peakRssMiB: number | null;
};

export interface AccountingResult {
  stack: string;
  at: string;
  rows: AccountingRow[];
  /** Agents that did not answer, with why. */
  unreachable: { cluster: string; host: number; agent: string; error: string }[];
}

/** The stack's clusters with what accounting needs beyond `vse status`: the cluster CA (https agents) and the allocator's info. */
export interface AccountingStackState extends StackState {
  extra: Record<string, { ca: string | null; info: Record<string, string> }>;
}

export function accountingStateOf(resources: DeploymentResource[]): AccountingStackState {
  const extra: AccountingStackState["extra"] = {};
  for (const r of resources) {
    if (vseResourceKind(r) !== "VirtualCluster") continue;
    const o = r.outputs ?? {};
    const info = revealSecret(o.allocationInfo);
    const ca = revealSecret(o.ca);
    extra[String(o.name ?? r.urn.split("::").pop())] = {
      ca: typeof ca === "string" ? ca : null,
      info: info && typeof info === "object" ? (info as Record<string, string>) : {},
    };
  }
  return { ...stackStateOf(resources), extra };
}

export type AskAccounting = (url: string, token: string, ca: string | null) => Promise<AccountingReport>;

export const askAccounting: AskAccounting = async (url, token, ca) => {
  const { AgentClient } = require("../agent/client") as typeof import("../agent/client");
  return new AgentClient(url, token, ca ? { ca } : {}).request<AccountingReport>("GET", "/v1/accounting", undefined, 10000);
};

/** The scheduler's job a cluster's allocation is, from its info (e.g. { slurmJobId: "12" }). */
function clusterJobId(info: Record<string, string>): string | null {
  const key = Object.keys(info).find((k) => /JobId$/i.test(k));
  return key ? String(info[key]) : null;
}

export async function stackAccounting(
  stack: string,
  state: AccountingStackState,
  ask: AskAccounting = askAccounting,
  now = new Date(),
): Promise<AccountingResult> {
  const result: AccountingResult = { stack, at: now.toISOString(), rows: [], unreachable: [] };
  for (const c of state.clusters) {
    const extra = state.extra[c.name] ?? { ca: null, info: {} };
    for (const a of c.agents) {
      let report: AccountingReport;
      try {
        if (!c.token) throw new Error("no token for this cluster in the stack's state");
        report = await ask(a.url, c.token, extra.ca);
      } catch (err) {
        result.unreachable.push({ cluster: c.name, host: a.host, agent: a.url, error: (err as Error).message });
        continue;
      }
      for (const r of report.records) {
        // An agent serves one cluster: records of VMs the stack no longer declares are still this cluster's history.
        result.rows.push({
          cluster: c.name,
          vm: r.vm,
          host: report.host ?? a.host,
          hostname: report.hostname,
          agent: a.url,
          schedulerJobId: report.schedulerJobId ?? clusterJobId(extra.info),
          pid: r.pid,
          state: r.endedAt === null ? "running" : "ended",
          startedAt: r.startedAt,
          endedAt: r.endedAt,
          wallSeconds: r.wallSeconds,
          cpuSeconds: r.cpuSeconds,
          vcpus: r.vcpus,
          memoryMiB: r.memoryMiB,
          peakRssMiB: r.peakRssMiB,
        });
      }
    }
  }
  result.rows.sort((x, y) => x.cluster.localeCompare(y.cluster) || x.vm.localeCompare(y.vm, "en", { numeric: true }) || x.startedAt.localeCompare(y.startedAt));
  return result;
}

function cell(v: unknown): string {
  return v === null || v === undefined ? "" : String(v);
}

/** RFC 4180: a field with a comma, quote or line break is quoted, its quotes doubled. */
function csvField(v: unknown): string {
  const s = cell(v);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function formatAccounting(r: AccountingResult, format: "table" | "json" | "csv"): string {
  if (format === "json") return JSON.stringify(r, null, 2) + "\n";
  if (format === "csv")
    return [ACCOUNTING_COLUMNS.join(","), ...r.rows.map((row) => ACCOUNTING_COLUMNS.map((k) => csvField(row[k])).join(","))].join("\n") + "\n";
  const header = ["CLUSTER", "VM", "HOST", "HOSTNAME", "JOB", "PID", "STATE", "WALL s", "CPU s", "VCPUS", "MEM MiB", "PEAK RSS MiB", "STARTED"];
  const lines = r.rows.map((x) => [
    x.cluster,
    x.vm,
    cell(x.host),
    x.hostname,
    x.schedulerJobId ?? "-",
    String(x.pid),
    x.state,
    x.wallSeconds.toFixed(1),
    x.cpuSeconds.toFixed(2),
    cell(x.vcpus),
    cell(x.memoryMiB),
    x.peakRssMiB === null ? "-" : x.peakRssMiB.toFixed(1),
    x.startedAt,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const fmt = (l: string[]) =>
    l
      .map((c, i) => c.padEnd(widths[i]))
      .join("  ")
      .trimEnd();
  const out = [fmt(header), ...lines.map(fmt)];
  if (!r.rows.length) out.push("(no VM has run on the stack's agents)");
  for (const u of r.unreachable) out.push(`agent of cluster ${u.cluster} host ${u.host} (${u.agent}) did not answer: ${u.error}`);
  return out.join("\n") + "\n";
}

export interface AccountingOptions {
  stack: string;
  format: "table" | "json" | "csv";
  workDir: string;
  env: Record<string, string>;
}

/** Reads the stack's state through the Automation API, as `vse status` does, with the clusters' CA and allocation info. */
export async function readAccountingState(stackName: string, env: Record<string, string>, workDir: string): Promise<AccountingStackState> {
  const { LocalWorkspace, PulumiCommand } = await import("@pulumi/pulumi/automation");
  const path = require("path") as typeof import("path");
  const { engineBinDir } = require("./engine") as typeof import("./engine");
  const pulumiCommand = await PulumiCommand.get({ root: path.dirname(engineBinDir()), skipVersionCheck: true });
  const stack = await LocalWorkspace.selectStack({ stackName, workDir }, { envVars: env, pulumiCommand });
  const deployment = await stack.exportStack();
  return accountingStateOf((deployment.deployment?.resources ?? []) as DeploymentResource[]);
}

/** Exit code 0; 1 when an agent did not answer (the figures shown are then incomplete). */
export async function runAccounting(
  o: AccountingOptions,
  write: (text: string) => void,
  deps: { read?: typeof readAccountingState; ask?: AskAccounting } = {},
): Promise<number> {
  const state = await (deps.read ?? readAccountingState)(o.stack, o.env, o.workDir);
  const r = await stackAccounting(o.stack, state, deps.ask);
  write(formatAccounting(r, o.format));
  return r.unreachable.length ? 1 : 0;
}
