// The site policy as a CrossGuard policy pack (policy-pack/ runs it: `pulumi
// preview|up --policy-pack policy-pack`). Its rules are the SitePolicy's, with
// the code `vse validate` and the node agents use (model/policy.ts), and its
// messages are theirs. It judges two resource types:
//
//  - every VirtualMachine, on its inputs (hypervisor, memoryMiB, vcpus, kernelArgs);
//  - every VirtualCluster, on the facts of the VMs it will run (input vmFacts),
//    per VM and per host. A cluster is registered, and created, before its VMs
//    (they need its agents' URLs), so this is what stops `up` before any agent
//    or QEMU process starts.
//
// Which policy: env VSE_SITE_POLICY (a file), else the pack's config property
// `sitePolicy` (--policy-pack-config), else <state dir>/site-policy.yaml when it
// exists (state dir: env VSE_STATE_DIR, default ~/.local/state/vse-provider),
// else the permissive local default.
import * as os from "os";
import * as path from "path";
import type { PolicyPackArgs, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy } from "@pulumi/policy";
import { DefinitionError, formatProblem } from "../model/errors";
import type { Located } from "../model/load";
import { agentLoadViolations, RuleViolation, violationMessage, VmPolicyFacts, vmRuleViolations } from "../model/policy";
import { loadSitePolicy } from "../model/site-policy";
import type { SitePolicy } from "../model/types.generated";

export const PACK_NAME = "vse-site-policy";
export const VM_TYPE = "pulumi-nodejs:dynamic/vse:VirtualMachine";
export const CLUSTER_TYPE = "pulumi-nodejs:dynamic/vse:VirtualCluster";
/** Where the agents' state lives when neither the environment nor the config says (as provider/program/plan.ts). */
const DEFAULT_STATE_DIR = path.join(os.homedir(), ".local", "state", "vse-provider");

/** What a VirtualCluster's input vmFacts holds per VM: the policy's facts of it (the kernel release aside) and its host. */
export type ClusterVmFacts = Omit<VmPolicyFacts, "kernelRelease"> & { host: number };

export interface PackConfig {
  /** The site policy file; VSE_SITE_POLICY wins over it. */
  sitePolicy?: string;
}

/** The site policy file the pack enforces, and where it came from. */
export function sitePolicySource(config: PackConfig = {}, env: NodeJS.ProcessEnv = process.env): { file?: string; stateRoot: string } {
  const file = env.VSE_SITE_POLICY || config.sitePolicy;
  return { file: file ? path.resolve(file) : undefined, stateRoot: path.resolve(env.VSE_STATE_DIR || DEFAULT_STATE_DIR) };
}

/** A dynamic resource's kind, from its type token; an untyped dynamic resource (pulumi-nodejs:dynamic:Resource) by the shape of its inputs. */
export function vseKind(type: string, props: Record<string, unknown>): "VirtualMachine" | "VirtualCluster" | undefined {
  if (type === VM_TYPE) return "VirtualMachine";
  if (type === CLUSTER_TYPE) return "VirtualCluster";
  if (type !== "pulumi-nodejs:dynamic:Resource") return undefined;
  const has = (...keys: string[]) => keys.every((k) => k in props);
  if (has("vmName", "hypervisor", "memoryMiB", "vcpus", "kernelArgs", "imageId")) return "VirtualMachine";
  if (has("stateRoot", "hosts", "manager", "imageStore")) return "VirtualCluster";
  return undefined;
}

function ruleAt(policy: Located<SitePolicy>, fromFile: boolean, v: RuleViolation): string | undefined {
  if (!fromFile) return undefined;
  const p = policy.at(v.rule);
  return `${policy.file}:${p.line}:${p.column}`;
}

/** The violations of one resource, as the messages `vse validate` gives (the rule's file:line:column included). */
export function resourceViolations(type: string, props: Record<string, unknown>, config: PackConfig = {}, env: NodeJS.ProcessEnv = process.env): string[] {
  const kind = vseKind(type, props);
  if (!kind) return [];
  const source = sitePolicySource(config, env);
  let policy: Located<SitePolicy>;
  try {
    policy = loadSitePolicy(source);
  } catch (err) {
    if (err instanceof DefinitionError) return [`the site policy cannot be read: ${err.problems.map(formatProblem).join("; ")}`];
    throw err;
  }
  const fromFile = policy.file !== "(embedded local default)";
  const message = (v: RuleViolation, what = v.what) => violationMessage(policy.doc, { ...v, what }, ruleAt(policy, fromFile, v));
  if (kind === "VirtualMachine") {
    const facts: VmPolicyFacts = {
      vm: String(props.vmName),
      hypervisor: String(props.hypervisor),
      memoryMiB: Number(props.memoryMiB),
      vcpus: Number(props.vcpus),
      kernelArgs: typeof props.kernelArgs === "string" ? props.kernelArgs.split(/\s+/).filter(Boolean) : [],
    };
    return vmRuleViolations(policy.doc, facts).map((v) => message(v));
  }
  const vms = (Array.isArray(props.vmFacts) ? props.vmFacts : []) as ClusterVmFacts[];
  const out: string[] = [];
  const perHost = new Map<number, { vms: number; memoryMiB: number }>();
  for (const f of vms) {
    const kernelRelease = policy.doc.spec.allowedKernels
      ? () => (require("../image/busybox") as typeof import("../image/busybox")).hostKernel().release
      : undefined;
    out.push(...vmRuleViolations(policy.doc, { ...f, kernelRelease }).map((v) => message(v)));
    const h = perHost.get(f.host) ?? { vms: 0, memoryMiB: 0 };
    perHost.set(f.host, { vms: h.vms + 1, memoryMiB: h.memoryMiB + f.memoryMiB });
  }
  for (const [host, load] of perHost) {
    for (const v of agentLoadViolations(policy.doc, load)) out.push(message(v, `host ${host} of the cluster would run ${v.what}`));
  }
  return out;
}

const configSchema = {
  properties: { sitePolicy: { type: "string" as const, description: "The site policy file (env VSE_SITE_POLICY overrides it)" } },
};

function validate(args: ResourceValidationArgs, report: ReportViolation): void {
  for (const m of resourceViolations(args.type, args.props, args.getConfig<PackConfig>())) report(m);
}

/** The pack's policies; policy-pack/index.js serves them with `new PolicyPack(PACK_NAME, policyPackArgs())`. */
export function policyPackArgs(): PolicyPackArgs {
  const policies: ResourceValidationPolicy[] = [
    {
      name: "vse-cluster-site-policy",
      description: "A VirtualCluster's VMs and hosts obey the site policy (checked before its node agents start)",
      enforcementLevel: "mandatory",
      configSchema,
      validateResource: (args, report) => (vseKind(args.type, args.props) === "VirtualCluster" ? validate(args, report) : undefined),
    },
    {
      name: "vse-vm-site-policy",
      description: "Each VirtualMachine obeys the site policy: memory, vCPUs, hypervisor, kernel parameters",
      enforcementLevel: "mandatory",
      configSchema,
      validateResource: (args, report) => (vseKind(args.type, args.props) === "VirtualMachine" ? validate(args, report) : undefined),
    },
  ];
  return { policies, enforcementLevel: "mandatory" };
}
