// Site policy (seed 004): administrators' rules merged with users' definitions.
// Defaults are merged into the documents first, so the effective definition is
// what gets resolved, rendered and applied; limits are then checked against the
// resolved clusters, so per-VM overrides and defaults are both covered.
import { DefinitionProblem } from "./errors";
import type { Definitions, Located } from "./load";
import type { ClusterModel } from "./resolve";
import type { Environment, SitePolicy, VirtualCluster, VmProfile } from "./types.generated";
import { parseMemoryMiB } from "./units";
import { isUnlocated } from "./site-policy";

export interface PolicyOptions {
  /** The kernel release guests boot; only called when the policy restricts kernels. */
  kernelRelease?: () => string;
  /** The site's policy, installed with the node agents (see site-policy.ts); checked besides any SitePolicy in the definitions. */
  sitePolicy?: Located<SitePolicy>;
}

type FieldPath = (string | number)[];

/** Where a value came from when a policy default filled it in. */
const filledByPolicy = new WeakMap<object, Map<string, { rule: FieldPath; policy: Located<SitePolicy> }>>();

/** The one policy that applies, or none; a second policy is a problem, since their merge would be ambiguous. */
export function selectPolicy(defs: Definitions, problems: DefinitionProblem[]): Located<SitePolicy> | undefined {
  const all = [...(defs.policies?.values() ?? [])];
  for (const extra of all.slice(1)) {
    const first = all[0].at(["metadata", "name"]);
    problems.push({
      file: extra.file,
      ...extra.at(["metadata", "name"]),
      field: "metadata.name",
      message: `only one SitePolicy may apply; "${all[0].doc.metadata.name}" is already defined at ${all[0].file}:${first.line}:${first.column}`,
    });
  }
  return all[0];
}

/** A copy of a document that remembers which of its fields earlier policies filled. */
function copyDoc<T extends object>(from: T, doc: T): T {
  const prev = filledByPolicy.get(from);
  if (prev) filledByPolicy.set(doc, new Map(prev));
  return doc;
}

/** The definitions with the policy's defaults merged into every field users left unset; the input is not modified. */
export function applyPolicyDefaults(defs: Definitions, policy: Located<SitePolicy>): Definitions {
  const d = policy.doc.spec.defaults ?? {};
  const rule = (...p: FieldPath) => ["spec", "defaults", ...p];
  const fill = <T extends object>(target: T, key: keyof T & string, value: unknown, doc: object, docPath: FieldPath, rulePath: FieldPath): void => {
    if (value === undefined || target[key] !== undefined) return;
    (target as Record<string, unknown>)[key] = structuredClone(value);
    let m = filledByPolicy.get(doc);
    if (!m) filledByPolicy.set(doc, (m = new Map()));
    m.set([...docPath, key].join("."), { rule: rulePath, policy });
  };
  const profiles = new Map<string, Located<VmProfile>>();
  for (const [name, l] of defs.profiles) {
    const doc: VmProfile = copyDoc(l.doc, { ...l.doc, spec: { ...(l.doc.spec ?? {}) } });
    for (const k of ["hypervisor", "memory", "vcpus", "machine", "accel"] as const) fill(doc.spec, k, d.profile?.[k], doc, ["spec"], rule("profile", k));
    profiles.set(name, { ...l, doc });
  }
  const environments = new Map<string, Located<Environment>>();
  for (const [name, l] of defs.environments) {
    const doc: Environment = copyDoc(l.doc, { ...l.doc, spec: { ...l.doc.spec, job: { ...l.doc.spec.job } } });
    fill(doc.spec, "kernelArgs", d.environment?.kernelArgs, doc, ["spec"], rule("environment", "kernelArgs"));
    fill(doc.spec.job, "timeoutSeconds", d.environment?.timeoutSeconds, doc, ["spec", "job"], rule("environment", "timeoutSeconds"));
    fill(doc.spec.job, "afterJob", d.environment?.afterJob, doc, ["spec", "job"], rule("environment", "afterJob"));
    environments.set(name, { ...l, doc });
  }
  const clusters = new Map<string, Located<VirtualCluster>>();
  for (const [name, l] of defs.clusters) {
    const doc: VirtualCluster = copyDoc(l.doc, { ...l.doc, spec: { ...l.doc.spec, allocation: { ...(l.doc.spec.allocation ?? {}) } } });
    fill(doc.spec, "nodes", d.cluster?.nodes, doc, ["spec"], rule("cluster", "nodes"));
    fill(doc.spec.allocation!, "hosts", d.cluster?.hosts, doc, ["spec", "allocation"], rule("cluster", "hosts"));
    clusters.set(name, { ...l, doc });
  }
  return { environments, profiles, clusters, policies: defs.policies };
}

/** Glob ('*', '?') to an anchored regular expression. */
export function globToRegExp(glob: string): RegExp {
  const body = glob
    .replace(/[.+^${}()|[\]\\]/g, "\\$&")
    .replace(/\*/g, ".*")
    .replace(/\?/g, ".");
  return new RegExp(`^${body}$`);
}

function matchesAny(value: string, patterns: string[]): boolean {
  return patterns.some((p) => globToRegExp(p).test(value));
}

/** What one VM asks for, as far as site policy is concerned: the same facts whether they come from definitions or from a config an agent received. */
export interface VmPolicyFacts {
  vm: string;
  hypervisor: string;
  memoryMiB: number;
  vcpus: number;
  base?: string;
  mirror?: string;
  kernelArgs: string[];
  /** The kernel release the guest boots; asked for only when the policy restricts kernels. */
  kernelRelease?: () => string;
}

/** One broken rule, without a location: checkPolicy adds the definition's, the node agent answers 403 with it. */
export interface RuleViolation {
  field: "memory" | "vcpus" | "hypervisor" | "base" | "mirror" | "kernelArgs" | "kernel" | "agent";
  /** Index of the offending kernel parameter. */
  index?: number;
  what: string;
  rule: FieldPath;
  ruleText: string;
}

/** The message both the definitions check and the node agent give for a violation; `at` is where the rule is written, when known. */
export function violationMessage(policy: SitePolicy, v: Pick<RuleViolation, "what" | "rule" | "ruleText">, at?: string): string {
  return `${v.what}; site policy "${policy.metadata.name}" rule ${v.rule.join(".")}${at ? ` at ${at}` : ""} ${v.ruleText}`;
}

/** The per-VM rules of a site policy: limits and allow-lists. One code path for definitions, `vse validate`, and the node agent. */
export function vmRuleViolations(policy: SitePolicy, f: VmPolicyFacts): RuleViolation[] {
  const spec = policy.spec;
  const out: RuleViolation[] = [];
  const maxMemoryMiB = spec.limits?.maxMemory === undefined ? undefined : parseMemoryMiB(spec.limits.maxMemory);
  if (maxMemoryMiB !== undefined && f.memoryMiB > maxMemoryMiB) {
    out.push({
      field: "memory",
      what: `VM "${f.vm}" has ${f.memoryMiB} MiB of memory`,
      rule: ["spec", "limits", "maxMemory"],
      ruleText: `allows at most ${maxMemoryMiB} MiB per VM`,
    });
  }
  const maxVcpus = spec.limits?.maxVcpus;
  if (maxVcpus !== undefined && f.vcpus > maxVcpus) {
    out.push({
      field: "vcpus",
      what: `VM "${f.vm}" has ${f.vcpus} vCPUs`,
      rule: ["spec", "limits", "maxVcpus"],
      ruleText: `allows at most ${maxVcpus} vCPUs per VM`,
    });
  }
  if (spec.allowedHypervisors && !(spec.allowedHypervisors as string[]).includes(f.hypervisor)) {
    out.push({
      field: "hypervisor",
      what: `hypervisor "${f.hypervisor}"`,
      rule: ["spec", "allowedHypervisors"],
      ruleText: `allows only ${spec.allowedHypervisors.map((h) => `"${h}"`).join(", ")}`,
    });
  }
  if (f.base !== undefined && spec.allowedBases && !matchesAny(f.base, spec.allowedBases)) {
    out.push({
      field: "base",
      what: `base "${f.base}"`,
      rule: ["spec", "allowedBases"],
      ruleText: `allows only bases matching ${spec.allowedBases.map((p) => `"${p}"`).join(", ")}`,
    });
  }
  if (f.mirror !== undefined && spec.allowedMirrors && !matchesAny(f.mirror, spec.allowedMirrors)) {
    out.push({
      field: "mirror",
      what: `mirror "${f.mirror}"`,
      rule: ["spec", "allowedMirrors"],
      ruleText: `allows only mirrors matching ${spec.allowedMirrors.map((p) => `"${p}"`).join(", ")}`,
    });
  }
  f.kernelArgs.forEach((arg, i) => {
    const j = (spec.forbiddenKernelArgs ?? []).findIndex((p) => globToRegExp(p).test(arg));
    if (j >= 0)
      out.push({
        field: "kernelArgs",
        index: i,
        what: `kernel parameter "${arg}"`,
        rule: ["spec", "forbiddenKernelArgs", j],
        ruleText: `forbids "${spec.forbiddenKernelArgs![j]}"`,
      });
  });
  if (spec.allowedKernels && f.kernelRelease) {
    const release = f.kernelRelease();
    if (!matchesAny(release, spec.allowedKernels)) {
      out.push({
        field: "kernel",
        what: `base "${f.base ?? "?"}" boots kernel ${release}`,
        rule: ["spec", "allowedKernels"],
        ruleText: `allows only kernels matching ${spec.allowedKernels.map((p) => `"${p}"`).join(", ")}`,
      });
    }
  }
  return out;
}

/** The per-agent caps of a site policy: how many VMs and how much guest memory one node agent runs at once. */
export function agentLoadViolations(policy: SitePolicy, load: { vms: number; memoryMiB: number }): RuleViolation[] {
  const limits = (policy.spec.limits ?? {}) as { maxVmsPerAgent?: number; maxMemoryPerAgent?: number | string };
  const out: RuleViolation[] = [];
  if (limits.maxVmsPerAgent !== undefined && load.vms > limits.maxVmsPerAgent) {
    out.push({
      field: "agent",
      what: `${load.vms} VMs`,
      rule: ["spec", "limits", "maxVmsPerAgent"],
      ruleText: `allows at most ${limits.maxVmsPerAgent} VMs per node agent`,
    });
  }
  const maxMem = limits.maxMemoryPerAgent === undefined ? undefined : parseMemoryMiB(limits.maxMemoryPerAgent);
  if (maxMem !== undefined && load.memoryMiB > maxMem) {
    out.push({
      field: "agent",
      what: `${load.memoryMiB} MiB of guest memory`,
      rule: ["spec", "limits", "maxMemoryPerAgent"],
      ruleText: `allows at most ${maxMem} MiB of guest memory per node agent`,
    });
  }
  return out;
}

/** Checks the resolved clusters against the policy's limits and allow-lists; returns one problem per offending field. */
export function checkPolicy(defs: Definitions, policy: Located<SitePolicy>, clusters: ClusterModel[], options: PolicyOptions = {}): DefinitionProblem[] {
  const spec = policy.doc.spec;
  const problems: DefinitionProblem[] = [];
  const seen = new Set<string>();
  const ruleAt = (rule: FieldPath, where: Located<SitePolicy> = policy) => {
    if (isUnlocated(where)) return undefined;
    const p = where.at(rule);
    return `${where.file}:${p.line}:${p.column}`;
  };
  const violation = (l: Located<object>, field: FieldPath, what: string, rule: FieldPath, ruleText: string) => {
    const loc = l.at(field);
    const key = `${l.file}:${loc.line}:${loc.column}:${field.join(".")}:${rule.join(".")}`;
    if (seen.has(key)) return;
    seen.add(key);
    const fills = filledByPolicy.get(l.doc);
    const filled = field.map((_, i) => fills?.get(field.slice(0, field.length - i).join("."))).find((f) => f);
    const filledAt = filled && ruleAt(filled.rule, filled.policy);
    const source = filled
      ? ` (set by policy default ${filled.rule.join(".")}${filledAt ? ` at ${filledAt}` : ` of site policy "${filled.policy.doc.metadata.name}"`})`
      : "";
    problems.push({
      file: l.file,
      ...loc,
      field: field.join("."),
      message: violationMessage(policy.doc, { what: `${what}${source}`, rule, ruleText }, ruleAt(rule)),
    });
  };

  for (const c of clusters) {
    const cl = defs.clusters.get(c.name)!;
    const prof = defs.profiles.get(c.profile.name)!;
    const env = defs.environments.get(c.environment.name)!;
    const overrides = cl.doc.spec.overrides ?? [];

    const maxNodes = spec.limits?.maxNodesPerCluster;
    if (maxNodes !== undefined && c.vms.length > maxNodes) {
      violation(cl, ["spec", "nodes"], `${c.vms.length} nodes`, ["spec", "limits", "maxNodesPerCluster"], `allows at most ${maxNodes} nodes per cluster`);
    }
    const perHost = new Map<number, { vms: number; memoryMiB: number }>();
    for (const vm of c.vms) {
      const h = perHost.get(vm.host) ?? { vms: 0, memoryMiB: 0 };
      perHost.set(vm.host, { vms: h.vms + 1, memoryMiB: h.memoryMiB + vm.profile.memoryMiB });
    }
    for (const [host, load] of perHost) {
      for (const v of agentLoadViolations(policy.doc, load))
        violation(cl, ["spec", "nodes"], `host ${host} of the cluster would run ${v.what}`, v.rule, v.ruleText);
    }
    for (const vm of c.vms) {
      const k = overrides.findIndex((o) => o.vm === vm.index);
      const o = overrides[k];
      const facts: VmPolicyFacts = {
        vm: vm.name,
        hypervisor: vm.profile.hypervisor,
        memoryMiB: vm.profile.memoryMiB,
        vcpus: vm.profile.vcpus,
        base: c.environment.base,
        mirror: c.environment.debian?.mirror,
        kernelArgs: c.environment.kernelArgs,
        kernelRelease: spec.allowedKernels ? options.kernelRelease : undefined,
      };
      for (const v of vmRuleViolations(policy.doc, facts)) {
        const [l, field]: [Located<object>, FieldPath] =
          v.field === "memory"
            ? o?.memory !== undefined
              ? [cl, ["spec", "overrides", k, "memory"]]
              : [prof, ["spec", "memory"]]
            : v.field === "vcpus"
              ? o?.vcpus !== undefined
                ? [cl, ["spec", "overrides", k, "vcpus"]]
                : [prof, ["spec", "vcpus"]]
              : v.field === "hypervisor"
                ? [prof, ["spec", "hypervisor"]]
                : v.field === "mirror"
                  ? [env, ["spec", "debian", "mirror"]]
                  : v.field === "kernelArgs"
                    ? [env, ["spec", "kernelArgs", v.index!]]
                    : [env, ["spec", "base"]];
        violation(l, field, v.what, v.rule, v.ruleText);
      }
    }
  }
  return problems;
}

/** Problems in the policy itself that the schema cannot express: its own defaults must satisfy its limits. */
export function checkPolicyConsistency(policy: Located<SitePolicy>): DefinitionProblem[] {
  const { defaults = {}, limits = {} } = policy.doc.spec;
  const problems: DefinitionProblem[] = [];
  const at = (p: FieldPath) => ({ file: policy.file, ...policy.at(p), field: p.join(".") });
  const parse = (field: FieldPath, v: number | string): number | undefined => {
    try {
      return parseMemoryMiB(v);
    } catch (err) {
      problems.push({ ...at(field), message: (err as Error).message });
      return undefined;
    }
  };
  const max = limits.maxMemory === undefined ? undefined : parse(["spec", "limits", "maxMemory"], limits.maxMemory);
  const def = defaults.profile?.memory === undefined ? undefined : parse(["spec", "defaults", "profile", "memory"], defaults.profile.memory);
  if (max !== undefined && def !== undefined && def > max) {
    problems.push({ ...at(["spec", "defaults", "profile", "memory"]), message: `default of ${def} MiB exceeds this policy's limits.maxMemory of ${max} MiB` });
  }
  const vcpus = defaults.profile?.vcpus;
  if (vcpus !== undefined && limits.maxVcpus !== undefined && vcpus > limits.maxVcpus) {
    problems.push({
      ...at(["spec", "defaults", "profile", "vcpus"]),
      message: `default of ${vcpus} vCPUs exceeds this policy's limits.maxVcpus of ${limits.maxVcpus}`,
    });
  }
  const nodes = defaults.cluster?.nodes;
  if (nodes !== undefined && limits.maxNodesPerCluster !== undefined && nodes > limits.maxNodesPerCluster) {
    problems.push({
      ...at(["spec", "defaults", "cluster", "nodes"]),
      message: `default of ${nodes} nodes exceeds this policy's limits.maxNodesPerCluster of ${limits.maxNodesPerCluster}`,
    });
  }
  const hv = defaults.profile?.hypervisor;
  if (hv !== undefined && policy.doc.spec.allowedHypervisors && !policy.doc.spec.allowedHypervisors.includes(hv)) {
    problems.push({ ...at(["spec", "defaults", "profile", "hypervisor"]), message: `default hypervisor "${hv}" is not in this policy's allowedHypervisors` });
  }
  return problems;
}
