#!/usr/bin/env node
// The `vse` command: validate definitions, show what they render to, plan a
// change offline against a git ref (for a pull-request comment), and show what a
// stack's clusters are doing now (status).
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { stringify } from "yaml";
import { DefinitionError, DefinitionProblem, formatProblem } from "../model/errors";
import { collectFiles, isPulumiProjectFile, loadDefinitions, Located } from "../model/load";
import { Policy, vmEffectiveChange } from "../model/lifecycle";
import { resolveClusters } from "../model/resolve";
import { hostKernel } from "../image/busybox";
import { ClusterPlan, DEFAULT_CACHE_DIR, DEFAULT_STATE_DIR, offlineAgentInputs, PlanOptions, planClusters, VmPlan, vmInputs } from "../program/plan";
import { loadSitePolicy, sitePolicyFromObject } from "../model/site-policy";
import type { SitePolicy } from "../model/types.generated";

export interface CliIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  cwd: string;
  /** Environment for the engine (PULUMI_BACKEND_URL, PULUMI_CONFIG_PASSPHRASE); default process.env. */
  env?: NodeJS.ProcessEnv;
}

const USAGE = `usage:
  vse validate <paths…> [--format text|json] [site policy options]
  vse render <paths…> [--out <dir>] [--hypervisor <name>] [--cache-dir <dir>] [--accel-auto tcg|kvm] [--stack <name>] [site policy options]
  vse plan --base <git-ref> [<paths…>] [--format text|markdown|json] [--cache-dir <dir>] [--accel-auto tcg|kvm] [--stack <name>] [site policy options]
  vse status [--stack <name>] [--format text|json] [--watch] [--cwd <project dir>]
  vse warm <paths…> [--cache-dir <dir>] [--stack <name>]   make warm-launch snapshots ahead of time
  vse accounting [--stack <name>] [--format table|json|csv] [--cwd <project dir>]   CPU, memory and wall time per VM and host
  vse checkpoint save <vm> | list | restore <checkpoint id> <vm> [--host <n>]  [--stack <name>] [--cwd <project dir>]
  vse job submit <paths…> --cluster <name> --jobs N --vms-per-slot V [--partition P] [--json]
                VM jobs through Slurm (seed 003): a job array of N slots, V VMs each; prints outputs and exit codes

  --accel-auto  what accel 'auto' resolves to, instead of a probe boot under KVM (offline use, CI)
  --hypervisor  render every profile for this hypervisor instead of its own (a what-if; policy still applies)
  --stack, --project  the Pulumi stack and project the clusters run in (default local, vse): names, MACs and networks derive from them
  --watch       (status) redraw every second until interrupted
  --cwd         (status) the Pulumi project directory (default: this clone); the backend and passphrase are
                PULUMI_BACKEND_URL (default file://<clone>/.pulumi-state) and PULUMI_CONFIG_PASSPHRASE (default vse-local)

site policy options (the policy the node agents enforce; default: <state dir>/site-policy.yaml if it exists, else none):
  --site-policy <file>   the site's SitePolicy file
  --agent unix:<socket>  ask a running node agent for the policy it enforces (GET /v1/policy)
  --state-dir <dir>      the agents' state root (default ~/.local/state/vse-provider)
`;

class UsageError extends Error {}

const VALUE_OPTIONS = [
  "--format",
  "--out",
  "--base",
  "--cache-dir",
  "--accel-auto",
  "--hypervisor",
  "--stack",
  "--project",
  "--site-policy",
  "--agent",
  "--state-dir",
  "--cwd",
  "--watch",
  "--host",
] as const;
/** Options that take no value. */
const FLAG_OPTIONS: readonly string[] = ["--watch"];
type OptionName = (typeof VALUE_OPTIONS)[number];
const POLICY_OPTIONS: OptionName[] = ["--site-policy", "--agent", "--state-dir"];
const OPTIONS_OF: Record<string, OptionName[]> = {
  validate: ["--format", ...POLICY_OPTIONS],
  render: ["--out", "--hypervisor", "--cache-dir", "--accel-auto", "--stack", "--project", ...POLICY_OPTIONS],
  plan: ["--base", "--format", "--cache-dir", "--accel-auto", "--stack", "--project", ...POLICY_OPTIONS],
  status: ["--stack", "--format", "--watch", "--cwd"],
  warm: ["--cache-dir", "--accel-auto", "--stack", "--project", ...POLICY_OPTIONS],
  accounting: ["--stack", "--format", "--cwd"],
  checkpoint: ["--stack", "--cwd", "--host"],
};

/** The site policy the agents enforce, so that validate, render and plan report what the agents would refuse. */
async function sitePolicyOf(options: Map<OptionName, string>, cwd: string): Promise<Located<SitePolicy>> {
  const agent = options.get("--agent");
  const file = options.get("--site-policy");
  if (agent !== undefined && file !== undefined) throw new UsageError("give --site-policy or --agent, not both");
  if (agent !== undefined) {
    const { AgentClient } = require("../agent/client") as typeof import("../agent/client");
    const { policy } = await new AgentClient(agent, "").policy();
    return sitePolicyFromObject(policy, `site policy of agent ${agent}`);
  }
  return loadSitePolicy({
    file: file === undefined ? undefined : path.resolve(cwd, file),
    stateRoot: path.resolve(cwd, options.get("--state-dir") ?? DEFAULT_STATE_DIR),
  });
}

function parseArgs(argv: string[]): { command?: string; positional: string[]; options: Map<OptionName, string>; help: boolean } {
  const [command, ...rest] = argv;
  const positional: string[] = [];
  const options = new Map<OptionName, string>();
  let help = command === "--help" || command === "-h" || command === "help";
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if (a === "--help" || a === "-h") help = true;
    else if (a.startsWith("--")) {
      const [name, inline] = a.includes("=") ? [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)] : [a, undefined];
      if (!(VALUE_OPTIONS as readonly string[]).includes(name)) throw new UsageError(`unknown option ${name}`);
      if (FLAG_OPTIONS.includes(name)) {
        if (inline !== undefined) throw new UsageError(`${name} takes no value`);
        options.set(name as OptionName, "true");
        continue;
      }
      const v = inline ?? rest[++i];
      if (v === undefined) throw new UsageError(`${name} needs a value`);
      options.set(name as OptionName, v);
    } else positional.push(a);
  }
  return { command, positional, options, help };
}

function oneOf<T extends string>(name: string, value: string | undefined, allowed: readonly T[], fallback: T): T {
  if (value === undefined) return fallback;
  if (!(allowed as readonly string[]).includes(value)) throw new UsageError(`${name} must be one of ${allowed.join(", ")}, not "${value}"`);
  return value as T;
}

/** File names relative to the working directory when inside it: shorter, and what CI annotations expect. */
function displayPath(file: string, cwd: string): string {
  const rel = path.relative(cwd, file);
  return rel && !rel.startsWith("..") && !path.isAbsolute(rel) ? rel : file;
}

function relativeProblems(problems: DefinitionProblem[], cwd: string): DefinitionProblem[] {
  // Messages name other files too (a policy rule, a first definition): shorten those alike.
  const prefix = cwd.endsWith(path.sep) ? cwd : cwd + path.sep;
  return problems.map((p) => ({ ...p, file: displayPath(path.resolve(cwd, p.file), cwd), message: p.message.split(prefix).join("") }));
}

async function planOptions(options: Map<OptionName, string>, cwd: string): Promise<PlanOptions> {
  const auto = options.get("--accel-auto");
  const where = { project: options.get("--project") ?? "vse", stack: options.get("--stack") ?? "local", sitePolicy: await sitePolicyOf(options, cwd) };
  if (auto === undefined) return where;
  const accel = oneOf("--accel-auto", auto, ["tcg", "kvm"] as const, "tcg");
  return { ...where, resolveAccel: async (a) => (a === "auto" ? accel : a) };
}

/** Runs the CLI; returns the exit code (0 ok, 1 invalid definitions, 2 usage or environment error). */
export async function main(argv: string[], io: Partial<CliIo> = {}): Promise<number> {
  const out = io.stdout ?? ((t: string) => void process.stdout.write(t));
  const err = io.stderr ?? ((t: string) => void process.stderr.write(t));
  const cwd = io.cwd ?? process.cwd();
  const full: CliIo = { stdout: out, stderr: err, cwd, ...(io.env ? { env: io.env } : {}) };
  // `vse job …` has options of its own (provider/job/submit.ts).
  if (argv[0] === "job") return (require("../job/submit") as typeof import("../job/submit")).jobMain(argv.slice(1), full);
  try {
    const args = parseArgs(argv);
    if (args.help || !args.command) {
      (args.help ? out : err)(USAGE);
      return args.help ? 0 : 2;
    }
    const allowed = OPTIONS_OF[args.command];
    for (const name of args.options.keys()) {
      if (allowed && !allowed.includes(name)) throw new UsageError(`${name} does not apply to vse ${args.command}`);
    }
    switch (args.command) {
      case "validate":
        return await validate(args.positional, args.options, full);
      case "render":
        return await render(args.positional, args.options, full);
      case "plan":
        return await plan(args.positional, args.options, full);
      case "status":
        return await status(args.positional, args.options, full);
      case "warm":
        return await warm(args.positional, args.options, full);
      case "accounting":
        return await accounting(args.positional, args.options, full);
      case "checkpoint":
        return await checkpoint(args.positional, args.options, full);
      default:
        throw new UsageError(`unknown command "${args.command}"`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      err(`vse: ${e.message}\n${USAGE}`);
      return 2;
    }
    if (e instanceof DefinitionError) {
      err(relativeProblems(e.problems, cwd).map(formatProblem).join("\n") + "\n");
      return 1;
    }
    err(`vse: ${(e as Error)?.message ?? String(e)}\n`);
    return 2;
  }
}

function requirePaths(positional: string[], cwd: string): string[] {
  if (!positional.length) throw new UsageError("name at least one file or directory of definitions");
  return positional.map((p) => path.resolve(cwd, p));
}

async function validate(positional: string[], options: Map<OptionName, string>, io: CliIo): Promise<number> {
  const format = oneOf("--format", options.get("--format"), ["text", "json"] as const, "text");
  const paths = requirePaths(positional, io.cwd);
  let problems: DefinitionProblem[] = [];
  let summary = "";
  try {
    const sitePolicy = await sitePolicyOf(options, io.cwd);
    const defs = loadDefinitions(paths);
    const clusters = resolveClusters(defs, { kernelRelease: () => hostKernel().release, sitePolicy });
    const count = defs.environments.size + defs.profiles.size + defs.clusters.size + (defs.policies?.size ?? 0);
    summary = `${count} definitions valid (${clusters.length} clusters, ${clusters.reduce((n, c) => n + c.vms.length, 0)} VMs)`;
  } catch (e) {
    if (!(e instanceof DefinitionError)) throw e;
    problems = relativeProblems(e.problems, io.cwd);
  }
  if (format === "json") {
    io.stdout(
      JSON.stringify(
        problems.map(({ file, line, column, field, message }) => ({ file, line, column, field, message })),
        null,
        2,
      ) + "\n",
    );
  } else if (problems.length) {
    io.stderr(problems.map(formatProblem).join("\n") + `\n${problems.length} problem${problems.length === 1 ? "" : "s"}\n`);
  } else {
    io.stdout(summary + "\n");
  }
  return problems.length ? 1 : 0;
}

/** The effective definitions: every default (schema and site policy) written out, units normalised. */
export function effectiveDocuments(plans: ClusterPlan[]): object[] {
  const envs = new Map<string, object>();
  const profiles = new Map<string, object>();
  const clusters: object[] = [];
  for (const { model } of plans) {
    const e = model.environment;
    envs.set(e.name, {
      apiVersion: "vse.dev/v1",
      kind: "Environment",
      metadata: { name: e.name },
      spec: { base: e.base, ...(e.debian ? { debian: e.debian } : {}), kernelArgs: e.kernelArgs, job: e.job },
    });
    const p = model.profile;
    profiles.set(p.name, {
      apiVersion: "vse.dev/v1",
      kind: "VmProfile",
      metadata: { name: p.name },
      spec: { hypervisor: p.hypervisor, memory: `${p.memoryMiB}MiB`, vcpus: p.vcpus, machine: p.machine, accel: p.accel },
    });
    const overrides = model.vms
      .filter((vm) => vm.profile.memoryMiB !== p.memoryMiB || vm.profile.vcpus !== p.vcpus)
      .map((vm) => ({
        vm: vm.index,
        ...(vm.profile.memoryMiB !== p.memoryMiB ? { memory: `${vm.profile.memoryMiB}MiB` } : {}),
        ...(vm.profile.vcpus !== p.vcpus ? { vcpus: vm.profile.vcpus } : {}),
      }));
    // Back to the definition's form: declared hosts are the list itself, not their count.
    const { hostList, ...allocation } = model.allocation;
    clusters.push({
      apiVersion: "vse.dev/v1",
      kind: "VirtualCluster",
      metadata: { name: model.name },
      spec: {
        environment: e.name,
        profile: p.name,
        nodes: model.vms.length,
        allocation: { ...allocation, hosts: hostList ?? allocation.hosts },
        network: model.network,
        recovery: model.recovery,
        overrides,
      },
    });
  }
  return [...envs.values(), ...profiles.values(), ...clusters];
}

function effectiveYaml(plans: ClusterPlan[]): string {
  return effectiveDocuments(plans)
    .map((d) => stringify(d, { lineWidth: 0 }))
    .join("---\n");
}

async function render(positional: string[], options: Map<OptionName, string>, io: CliIo): Promise<number> {
  const paths = requirePaths(positional, io.cwd);
  const cacheDir = path.resolve(io.cwd, options.get("--cache-dir") ?? DEFAULT_CACHE_DIR);
  const hypervisor = options.get("--hypervisor");
  const plans = await planClusters(paths, cacheDir, { ...(await planOptions(options, io.cwd)), ...(hypervisor === undefined ? {} : { hypervisor }) });
  const outDir = options.get("--out");
  if (outDir) {
    const dir = path.resolve(io.cwd, outDir);
    const written: string[] = [];
    const write = (rel: string, text: string) => {
      const file = path.join(dir, rel);
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(file, text);
      written.push(displayPath(file, io.cwd));
    };
    write("effective.yaml", effectiveYaml(plans));
    for (const c of plans) for (const p of c.vms) write(path.join(c.model.name, `${p.vm.name}.${p.vm.profile.hypervisor}.conf`), p.config);
    io.stdout(written.map((f) => `wrote ${f}\n`).join(""));
    return 0;
  }
  const parts = [`# Effective definitions (defaults and site policy applied)\n${effectiveYaml(plans)}`];
  for (const c of plans) {
    for (const p of c.vms)
      parts.push(`# ${p.vm.name}: rendered ${p.vm.profile.hypervisor} config (accel ${p.accel})\n${p.config.endsWith("\n") ? p.config : p.config + "\n"}`);
  }
  io.stdout(parts.join("\n"));
  return 0;
}

// ---- plan

export type PlanAction = "create" | "update in place" | "restart" | "migrate" | "replace" | "delete" | "no change";

export interface VmPlanRow {
  vm: string;
  cluster: string;
  action: PlanAction;
  /** VirtualMachine inputs that differ (see VM_INPUT_POLICY). */
  changed: string[];
  /** Unified diff of the rendered config; empty when it is unchanged. */
  diff: string;
}

const ACTION_OF: Record<Policy, PlanAction> = { "in-place": "update in place", restart: "restart", migrate: "migrate", replace: "replace" };

/** Compares two plans VM by VM, with the same inputs and policies as the provider's diff. */
export function comparePlans(base: ClusterPlan[], head: ClusterPlan[]): VmPlanRow[] {
  const index = (plans: ClusterPlan[]) => {
    const m = new Map<string, { c: ClusterPlan; p: VmPlan }>();
    for (const c of plans) for (const p of c.vms) m.set(p.vm.name, { c, p });
    return m;
  };
  const olds = index(base);
  const news = index(head);
  const rows: VmPlanRow[] = [];
  for (const [name, n] of news) {
    const o = olds.get(name);
    const label = `${name}.${n.p.vm.profile.hypervisor}.conf`;
    if (!o) {
      rows.push({ vm: name, cluster: n.c.model.name, action: "create", changed: [], diff: unifiedDiff("", n.p.config, "/dev/null", `b/${label}`) });
      continue;
    }
    const a: Record<string, unknown> = vmInputs(o.c.model, o.p, offlineAgentInputs(o.c.model, o.p));
    const b: Record<string, unknown> = vmInputs(n.c.model, n.p, offlineAgentInputs(n.c.model, n.p));
    // The same comparison as the provider's vmDiff.
    const changed = Object.keys(b).filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]));
    // The cluster is replaced (new agents) when its allocation changes, as VirtualCluster's diff says.
    const agentsReplaced = JSON.stringify(o.c.model.allocation) !== JSON.stringify(n.c.model.allocation) || o.c.model.name !== n.c.model.name;
    const { policy } = vmEffectiveChange(changed, { hypervisor: n.p.vm.profile.hypervisor, agentsReplaced });
    const oldLabel = `${name}.${o.p.vm.profile.hypervisor}.conf`;
    rows.push({
      vm: name,
      cluster: n.c.model.name,
      action: policy ? ACTION_OF[policy] : "no change",
      changed,
      diff: unifiedDiff(o.p.config, n.p.config, `a/${oldLabel}`, `b/${label}`),
    });
  }
  for (const [name, o] of olds) {
    if (news.has(name)) continue;
    rows.push({
      vm: name,
      cluster: o.c.model.name,
      action: "delete",
      changed: [],
      diff: unifiedDiff(o.p.config, "", `a/${name}.${o.p.vm.profile.hypervisor}.conf`, "/dev/null"),
    });
  }
  return rows.sort((x, y) => x.vm.localeCompare(y.vm, "en", { numeric: true }));
}

/** A unified diff (3 lines of context) of two texts; empty when they are equal. */
export function unifiedDiff(a: string, b: string, fromLabel: string, toLabel: string, context = 3): string {
  if (a === b) return "";
  const split = (t: string) => (t === "" ? [] : t.replace(/\n$/, "").split("\n"));
  const x = split(a);
  const y = split(b);
  // Longest common subsequence by dynamic programming: configs are tens of lines.
  const lcs = Array.from({ length: x.length + 1 }, () => new Array<number>(y.length + 1).fill(0));
  for (let i = x.length - 1; i >= 0; i--)
    for (let j = y.length - 1; j >= 0; j--) lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  const ops: { t: " " | "-" | "+"; line: string }[] = [];
  let i = 0;
  let j = 0;
  while (i < x.length || j < y.length) {
    if (i < x.length && j < y.length && x[i] === y[j]) {
      ops.push({ t: " ", line: x[i++] });
      j++;
    } else if (i < x.length && (j === y.length || lcs[i + 1][j] >= lcs[i][j + 1])) ops.push({ t: "-", line: x[i++] });
    else ops.push({ t: "+", line: y[j++] });
  }
  const out = [`--- ${fromLabel}`, `+++ ${toLabel}`];
  let k = 0;
  while (k < ops.length) {
    const first = ops.findIndex((op, n) => n >= k && op.t !== " ");
    if (first < 0) break;
    const start = Math.max(k, first - context);
    let end = first;
    // Extend the hunk while the next change is within 2*context lines.
    for (let n = first; n < ops.length; n++) {
      if (ops[n].t !== " ") end = n;
      else if (n - end > 2 * context) break;
    }
    const stop = Math.min(ops.length, end + context + 1);
    const hunk = ops.slice(start, stop);
    const before = ops.slice(0, start);
    const oldStart = before.filter((op) => op.t !== "+").length;
    const newStart = before.filter((op) => op.t !== "-").length;
    const oldLen = hunk.filter((op) => op.t !== "+").length;
    const newLen = hunk.filter((op) => op.t !== "-").length;
    out.push(`@@ -${oldLen ? oldStart + 1 : oldStart},${oldLen} +${newLen ? newStart + 1 : newStart},${newLen} @@`);
    for (const op of hunk) out.push(op.t + op.line);
    k = stop;
  }
  return out.join("\n") + "\n";
}

const ORDER: PlanAction[] = ["create", "update in place", "restart", "replace", "delete", "no change"];

function summary(rows: VmPlanRow[]): string {
  const counts = ORDER.map((a) => [a, rows.filter((r) => r.action === a).length] as const).filter(([, n]) => n > 0);
  return counts.length ? counts.map(([a, n]) => `${n} to ${a === "no change" ? "leave unchanged" : a}`).join(", ") : "no VMs";
}

export function formatPlanText(rows: VmPlanRow[], ref: string): string {
  const lines = [`vse plan: ${ref} → working tree`];
  const width = Math.max(2, ...rows.map((r) => r.vm.length));
  for (const r of rows) lines.push(`  ${r.vm.padEnd(width)}  ${r.action.padEnd(15)}${r.changed.length ? `  (${r.changed.join(", ")})` : ""}`);
  lines.push(summary(rows));
  const diffs = rows.filter((r) => r.diff);
  for (const r of diffs) lines.push("", `${r.vm}: ${r.action}`, r.diff.replace(/\n$/, ""));
  return lines.join("\n") + "\n";
}

export function formatPlanMarkdown(rows: VmPlanRow[], ref: string): string {
  const changes = rows.filter((r) => r.action !== "no change");
  const lines = [`### vse plan: \`${ref}\` → this branch`, "", `**${summary(rows)}**`, ""];
  if (changes.length) {
    lines.push("| VM | Cluster | Action | Changed inputs |", "| --- | --- | --- | --- |");
    for (const r of changes) lines.push(`| \`${r.vm}\` | \`${r.cluster}\` | **${r.action}** | ${r.changed.map((c) => `\`${c}\``).join(", ")} |`);
    lines.push("");
  } else {
    lines.push("No VM changes.", "");
  }
  for (const r of changes.filter((x) => x.diff)) {
    // A fence longer than any backtick run in the diff, so config text cannot close it.
    const fence = "`".repeat(Math.max(3, ...(r.diff.match(/`+/g) ?? []).map((s) => s.length + 1)));
    lines.push(
      `<details><summary><code>${r.vm}</code>: ${r.action} — rendered config</summary>`,
      "",
      `${fence}diff`,
      r.diff.replace(/\n$/, ""),
      fence,
      "",
      "</details>",
      "",
    );
  }
  return lines.join("\n");
}

/** Copies the definition files under paths, as they are at ref, into dir; returns each path with its copy, if it existed at ref. */
async function materialise(ref: string, paths: string[], cwd: string, dir: string): Promise<{ path: string; copy?: string }[]> {
  const execa = require("execa") as typeof import("execa");
  const git = async (args: string[], opts: { cwd: string }) => (await execa("git", args, opts)).stdout;
  const root = fs.realpathSync((await git(["rev-parse", "--show-toplevel"], { cwd })).trim());
  const verify = await execa("git", ["rev-parse", "--verify", "--quiet", `${ref}^{commit}`], { cwd, reject: false });
  if (verify.exitCode !== 0) throw new Error(`unknown git ref "${ref}"`);
  const out: { path: string; copy?: string }[] = [];
  for (const p of paths) {
    const abs = fs.existsSync(p) ? fs.realpathSync(p) : path.resolve(p);
    const rel = path.relative(root, abs);
    if (rel.startsWith("..") || path.isAbsolute(rel)) throw new Error(`${p} is outside the git repository ${root}`);
    const listed = (await git(["ls-tree", "-r", "-z", "--name-only", ref, "--", rel || "."], { cwd: root })).split("\0").filter(Boolean);
    for (const f of listed) {
      const inside = rel ? path.relative(rel, f) : f;
      const isNamedFile = f === rel;
      // The same selection as collectFiles: YAML files, no hidden directories or node_modules.
      const skipped = !/\.ya?ml$/.test(f) || isPulumiProjectFile(path.basename(f)) || inside.split("/").some((s) => s.startsWith(".") || s === "node_modules");
      if (!isNamedFile && skipped) continue;
      const content = (await execa("git", ["show", `${ref}:${f}`], { cwd: root, encoding: null })).stdout;
      const target = path.join(dir, f);
      fs.mkdirSync(path.dirname(target), { recursive: true });
      fs.writeFileSync(target, content);
    }
    const copy = path.join(dir, rel);
    out.push(fs.existsSync(copy) ? { path: p, copy } : { path: p });
  }
  return out;
}

async function plan(positional: string[], options: Map<OptionName, string>, io: CliIo): Promise<number> {
  const ref = options.get("--base");
  if (!ref) throw new UsageError("plan needs --base <git-ref>");
  const format = oneOf("--format", options.get("--format"), ["text", "markdown", "json"] as const, "text");
  const paths = (positional.length ? positional : ["."]).map((p) => path.resolve(io.cwd, p));
  const cacheDir = path.resolve(io.cwd, options.get("--cache-dir") ?? DEFAULT_CACHE_DIR);
  const opts = await planOptions(options, io.cwd);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "vse-plan-"));
  try {
    const sides = await materialise(ref, paths, io.cwd, tmp);
    const basePaths = sides.flatMap((s) => (s.copy ? [s.copy] : []));
    // A path deleted since ref plans as empty (its VMs are deleted); one missing on both sides is reported by the loader.
    const headPaths = sides.filter((s) => fs.existsSync(s.path) || !s.copy).map((s) => s.path);
    let base: ClusterPlan[] = [];
    // Nothing at ref (new definitions) plans as empty: everything is created.
    if (basePaths.length && collectFiles(basePaths).length) {
      try {
        base = await planClusters(basePaths, cacheDir, opts);
      } catch (e) {
        if (!(e instanceof DefinitionError)) throw e;
        const problems = e.problems.map((p) => ({ ...p, file: `${ref}:${path.relative(tmp, p.file)}` }));
        io.stderr(`the definitions at ${ref} are invalid, so there is nothing to compare with:\n${problems.map(formatProblem).join("\n")}\n`);
        return 1;
      }
    }
    const head = headPaths.length ? await planClusters(headPaths, cacheDir, opts) : [];
    const rows = comparePlans(base, head);
    if (format === "json") io.stdout(JSON.stringify(rows, null, 2) + "\n");
    else io.stdout(format === "markdown" ? formatPlanMarkdown(rows, ref) : formatPlanText(rows, ref));
    return 0;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

async function status(positional: string[], options: Map<OptionName, string>, io: CliIo): Promise<number> {
  if (positional.length) throw new UsageError(`status takes no paths, found "${positional[0]}"`);
  const format = oneOf("--format", options.get("--format"), ["text", "json"] as const, "text");
  const { engineEnv, PROJECT_ROOT } = require("./engine") as typeof import("./engine");
  const { runStatus } = require("./status") as typeof import("./status");
  const env = engineEnv({ backendUrl: io.env?.PULUMI_BACKEND_URL, passphrase: io.env?.PULUMI_CONFIG_PASSPHRASE });
  const cwdOption = options.get("--cwd");
  const workDir = cwdOption === undefined ? PROJECT_ROOT : path.resolve(io.cwd, cwdOption);
  return runStatus({ stack: options.get("--stack") ?? "local", format, watch: options.has("--watch"), workDir, env }, io.stdout);
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}

async function warm(positional: string[], options: Map<OptionName, string>, io: CliIo): Promise<number> {
  const { warmSnapshots } = require("./warm") as typeof import("./warm");
  const paths = requirePaths(positional, io.cwd);
  const cacheDir = path.resolve(io.cwd, options.get("--cache-dir") ?? DEFAULT_CACHE_DIR);
  const results = await warmSnapshots(paths, cacheDir, await planOptions(options, io.cwd));
  for (const r of results)
    io.stdout(`${r.cluster}: snapshot ${r.key.slice(0, 12)} ${r.state === "made" ? `made in ${r.seconds.toFixed(1)} s` : "already in the store"}\n`);
  if (!results.length) io.stdout("no cluster of a warm environment (Environment spec.warm) in these definitions\n");
  return 0;
}

/** The stack to read and how (as for status): engine environment and Pulumi project directory. */
function stackWhere(options: Map<OptionName, string>, io: CliIo): { stack: string; env: Record<string, string>; workDir: string } {
  const { engineEnv, PROJECT_ROOT } = require("./engine") as typeof import("./engine");
  const env = engineEnv({ backendUrl: io.env?.PULUMI_BACKEND_URL, passphrase: io.env?.PULUMI_CONFIG_PASSPHRASE });
  const cwdOption = options.get("--cwd");
  return { stack: options.get("--stack") ?? "local", env, workDir: cwdOption === undefined ? PROJECT_ROOT : path.resolve(io.cwd, cwdOption) };
}

async function accounting(positional: string[], options: Map<OptionName, string>, io: CliIo): Promise<number> {
  if (positional.length) throw new UsageError(`accounting takes no paths, found "${positional[0]}"`);
  const format = oneOf("--format", options.get("--format"), ["table", "json", "csv"] as const, "table");
  const { runAccounting } = require("./accounting") as typeof import("./accounting");
  return runAccounting({ ...stackWhere(options, io), format }, io.stdout);
}

async function checkpoint(positional: string[], options: Map<OptionName, string>, io: CliIo): Promise<number> {
  const [sub, ...rest] = positional;
  const want = { save: 1, list: 0, restore: 2 } as Record<string, number>;
  if (sub === undefined || !(sub in want)) throw new UsageError(`checkpoint: expected save, list or restore, found ${JSON.stringify(sub ?? "")}`);
  if (rest.length !== want[sub])
    throw new UsageError(`checkpoint ${sub}: expected ${sub === "save" ? "<vm>" : sub === "restore" ? "<checkpoint id> <vm>" : "no argument"}`);
  const hostOption = options.get("--host");
  if (hostOption !== undefined && (sub !== "restore" || !/^[0-9]{1,2}$/.test(hostOption)))
    throw new UsageError("--host: expected a host index (0-63), with restore only");
  const where = stackWhere(options, io);
  const { readAccountingState } = require("./accounting") as typeof import("./accounting");
  const cp = require("./checkpoint") as typeof import("./checkpoint");
  const state = await readAccountingState(where.stack, where.env, where.workDir);
  if (sub === "save") {
    const r = await cp.saveVmCheckpoint(state, rest[0]);
    io.stdout(`${rest[0]}: checkpoint ${r.checkpoint} (${(r.bytes / 1048576).toFixed(1)} MiB) on host ${r.host}; the VM runs on\n`);
  } else if (sub === "list") {
    const list = await cp.listStackCheckpoints(state);
    for (const m of list) io.stdout(`${m.id}  ${m.cluster}/${m.vm}  ${m.takenAt}  ${(m.bytes / 1048576).toFixed(1)} MiB  hosts ${m.hosts.join(",")}\n`);
    if (!list.length) io.stdout("no checkpoint in the stores of the stack's agents\n");
  } else {
    const r = await cp.restoreVmCheckpoint(state, rest[0], rest[1], hostOption === undefined ? undefined : Number(hostOption));
    io.stdout(
      `${rest[1]}: restored from checkpoint ${rest[0]} on host ${r.host} (pid ${r.pid ?? "?"})${r.stoppedOn.length ? `; its running copy on host ${r.stoppedOn.join(", ")} was stopped` : ""}\n`,
    );
  }
  return 0;
}
