// Site policy (seed 004): administrators' rules merged with users' definitions.
// Defaults are merged into the documents first, so the effective definition is
// what gets resolved, rendered and applied; limits are then checked against the
// resolved clusters, so per-VM overrides and defaults are both covered.
import { DefinitionProblem } from "./errors";
import type { Definitions, Located } from "./load";
import type { ClusterModel } from "./resolve";
import type { Environment, SitePolicy, VirtualCluster, VmProfile } from "./types.generated";
import { parseMemoryMiB } from "./units";

export interface PolicyOptions {
  /** The kernel release guests boot; only called when the policy restricts kernels. */
  kernelRelease?: () => string;
}

type FieldPath = (string | number)[];

/** Where a value came from when a policy default filled it in. */
const filledByPolicy = new WeakMap<object, Map<string, FieldPath>>();

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

function fill<T extends object>(target: T, key: keyof T & string, value: unknown, doc: object, docPath: FieldPath, rulePath: FieldPath): void {
  if (value === undefined || target[key] !== undefined) return;
  (target as Record<string, unknown>)[key] = structuredClone(value);
  let m = filledByPolicy.get(doc);
  if (!m) filledByPolicy.set(doc, (m = new Map()));
  m.set([...docPath, key].join("."), rulePath);
}

/** The definitions with the policy's defaults merged into every field users left unset; the input is not modified. */
export function applyPolicyDefaults(defs: Definitions, policy: Located<SitePolicy>): Definitions {
  const d = policy.doc.spec.defaults ?? {};
  const rule = (...p: FieldPath) => ["spec", "defaults", ...p];
  const profiles = new Map<string, Located<VmProfile>>();
  for (const [name, l] of defs.profiles) {
    const doc: VmProfile = { ...l.doc, spec: { ...(l.doc.spec ?? {}) } };
    for (const k of ["hypervisor", "memory", "vcpus", "machine", "accel"] as const) fill(doc.spec, k, d.profile?.[k], doc, ["spec"], rule("profile", k));
    profiles.set(name, { ...l, doc });
  }
  const environments = new Map<string, Located<Environment>>();
  for (const [name, l] of defs.environments) {
    const doc: Environment = { ...l.doc, spec: { ...l.doc.spec, job: { ...l.doc.spec.job } } };
    fill(doc.spec, "kernelArgs", d.environment?.kernelArgs, doc, ["spec"], rule("environment", "kernelArgs"));
    fill(doc.spec.job, "timeoutSeconds", d.environment?.timeoutSeconds, doc, ["spec", "job"], rule("environment", "timeoutSeconds"));
    fill(doc.spec.job, "afterJob", d.environment?.afterJob, doc, ["spec", "job"], rule("environment", "afterJob"));
    environments.set(name, { ...l, doc });
  }
  const clusters = new Map<string, Located<VirtualCluster>>();
  for (const [name, l] of defs.clusters) {
    const doc: VirtualCluster = { ...l.doc, spec: { ...l.doc.spec, allocation: { ...(l.doc.spec.allocation ?? {}) } } };
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

/** Checks the resolved clusters against the policy's limits and allow-lists; returns one problem per offending field. */
export function checkPolicy(defs: Definitions, policy: Located<SitePolicy>, clusters: ClusterModel[], options: PolicyOptions = {}): DefinitionProblem[] {
  const spec = policy.doc.spec;
  const problems: DefinitionProblem[] = [];
  const seen = new Set<string>();
  const ruleAt = (rule: FieldPath) => {
    const p = policy.at(rule);
    return `${policy.file}:${p.line}:${p.column}`;
  };
  const violation = (l: Located<object>, field: FieldPath, what: string, rule: FieldPath, ruleText: string) => {
    const loc = l.at(field);
    const key = `${l.file}:${loc.line}:${loc.column}:${field.join(".")}:${rule.join(".")}`;
    if (seen.has(key)) return;
    seen.add(key);
    const fills = filledByPolicy.get(l.doc);
    const filled = field.map((_, i) => fills?.get(field.slice(0, field.length - i).join("."))).find((f) => f);
    const source = filled ? ` (set by policy default ${filled.join(".")} at ${ruleAt(filled)})` : "";
    problems.push({
      file: l.file,
      ...loc,
      field: field.join("."),
      message: `${what}${source}; site policy "${policy.doc.metadata.name}" rule ${rule.join(".")} at ${ruleAt(rule)} ${ruleText}`,
    });
  };

  const maxMemoryMiB = spec.limits?.maxMemory === undefined ? undefined : parseMemoryMiB(spec.limits.maxMemory);
  for (const c of clusters) {
    const cl = defs.clusters.get(c.name)!;
    const prof = defs.profiles.get(c.profile.name)!;
    const env = defs.environments.get(c.environment.name)!;
    const overrides = cl.doc.spec.overrides ?? [];

    const maxNodes = spec.limits?.maxNodesPerCluster;
    if (maxNodes !== undefined && c.vms.length > maxNodes) {
      violation(cl, ["spec", "nodes"], `${c.vms.length} nodes`, ["spec", "limits", "maxNodesPerCluster"], `allows at most ${maxNodes} nodes per cluster`);
    }
    for (const vm of c.vms) {
      const k = overrides.findIndex((o) => o.vm === vm.index);
      const o = overrides[k];
      if (maxMemoryMiB !== undefined && vm.profile.memoryMiB > maxMemoryMiB) {
        const [l, field] = o?.memory !== undefined ? [cl, ["spec", "overrides", k, "memory"]] : [prof, ["spec", "memory"]];
        violation(
          l,
          field,
          `VM "${vm.name}" has ${vm.profile.memoryMiB} MiB of memory`,
          ["spec", "limits", "maxMemory"],
          `allows at most ${maxMemoryMiB} MiB per VM`,
        );
      }
      const maxVcpus = spec.limits?.maxVcpus;
      if (maxVcpus !== undefined && vm.profile.vcpus > maxVcpus) {
        const [l, field] = o?.vcpus !== undefined ? [cl, ["spec", "overrides", k, "vcpus"]] : [prof, ["spec", "vcpus"]];
        violation(l, field, `VM "${vm.name}" has ${vm.profile.vcpus} vCPUs`, ["spec", "limits", "maxVcpus"], `allows at most ${maxVcpus} vCPUs per VM`);
      }
    }
    const hv = c.profile.hypervisor;
    if (spec.allowedHypervisors && !spec.allowedHypervisors.includes(hv)) {
      violation(
        prof,
        ["spec", "hypervisor"],
        `hypervisor "${hv}"`,
        ["spec", "allowedHypervisors"],
        `allows only ${spec.allowedHypervisors.map((h) => `"${h}"`).join(", ")}`,
      );
    }
    const base = c.environment.base;
    if (spec.allowedBases && !matchesAny(base, spec.allowedBases)) {
      violation(
        env,
        ["spec", "base"],
        `base "${base}"`,
        ["spec", "allowedBases"],
        `allows only bases matching ${spec.allowedBases.map((p) => `"${p}"`).join(", ")}`,
      );
    }
    const mirror = c.environment.debian?.mirror;
    if (mirror !== undefined && spec.allowedMirrors && !matchesAny(mirror, spec.allowedMirrors)) {
      violation(
        env,
        ["spec", "debian", "mirror"],
        `mirror "${mirror}"`,
        ["spec", "allowedMirrors"],
        `allows only mirrors matching ${spec.allowedMirrors.map((p) => `"${p}"`).join(", ")}`,
      );
    }
    c.environment.kernelArgs.forEach((arg, i) => {
      const j = (spec.forbiddenKernelArgs ?? []).findIndex((p) => globToRegExp(p).test(arg));
      if (j >= 0)
        violation(env, ["spec", "kernelArgs", i], `kernel parameter "${arg}"`, ["spec", "forbiddenKernelArgs", j], `forbids "${spec.forbiddenKernelArgs![j]}"`);
    });
    if (spec.allowedKernels && options.kernelRelease) {
      const release = options.kernelRelease();
      if (!matchesAny(release, spec.allowedKernels)) {
        violation(
          env,
          ["spec", "base"],
          `base "${base}" boots kernel ${release}`,
          ["spec", "allowedKernels"],
          `allows only kernels matching ${spec.allowedKernels.map((p) => `"${p}"`).join(", ")}`,
        );
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
