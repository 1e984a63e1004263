// The Pulumi program (Pulumi.yaml: runtime nodejs). Reads the YAML definitions
// named by stack config `vse:definitions` (default examples/local-cluster) and
// declares the resources: Environment and VmProfile per definition, then per
// cluster a VirtualCluster and one VirtualMachine per VM, parented to it.
import * as fs from "fs";
import * as path from "path";
// Not the package index, which loads the whole SDK (automation API, closure serializer, TypeScript): over a second.
import type * as pulumi from "@pulumi/pulumi";
import { Config } from "@pulumi/pulumi/config";
import { RunError } from "@pulumi/pulumi/errors";
import { getProject, getStack } from "@pulumi/pulumi/metadata";
import { all } from "@pulumi/pulumi/output";
import { Environment, SnapshotAhead } from "../resources/environment";
import { VmProfile } from "../resources/vm-profile";
import { VirtualCluster } from "../resources/virtual-cluster";
import { VirtualMachine } from "../resources/virtual-machine";
import { ClusterPlan, DEFAULT_CACHE_DIR, DEFAULT_STATE_DIR, planClusters, vmInputs } from "./plan";
import { DefinitionError } from "../model/errors";
import { loadSitePolicy, sitePolicyFile as sitePolicyFileOf } from "../model/site-policy";

/** The directory of Pulumi.yaml: definitions and config paths are relative to it. */
function projectRoot(): string {
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, "Pulumi.yaml"))) return dir;
    if (path.dirname(dir) === dir) return process.cwd();
  }
}

async function main(): Promise<Record<string, unknown>> {
  const cfg = new Config("vse");
  const root = projectRoot();
  const definitions = (cfg.get("definitions") ?? "examples/local-cluster").split(",").map((p) => path.resolve(root, p.trim()));
  const cacheDir = path.resolve(root, cfg.get("cacheDir") ?? DEFAULT_CACHE_DIR);
  const stateRoot = path.resolve(root, cfg.get("stateDir") ?? DEFAULT_STATE_DIR);

  // The site's policy is the one the agents enforce; the program checks it too, so preview reports violations before anything starts.
  const sitePolicyFile = cfg.get("sitePolicy")
    ? path.resolve(root, cfg.get("sitePolicy")!)
    : fs.existsSync(sitePolicyFileOf(stateRoot))
      ? sitePolicyFileOf(stateRoot)
      : null;
  let plans;
  try {
    const sitePolicy = loadSitePolicy({ file: sitePolicyFile ?? undefined });
    plans = await planClusters(definitions, cacheDir, { project: getProject(), stack: getStack(), sitePolicy });
  } catch (err) {
    if (err instanceof DefinitionError) throw new RunError(`invalid definitions:\n${err.message}`);
    throw err;
  }

  // The SDK formats a stack trace (through the source maps) for every promise it makes while it registers a resource,
  // kept only to debug promise leaks (PULUMI_DEBUG_PROMISE_LEAKS): at 1,000 VMs, seconds of the program's time. So
  // none is captured until every resource is registered. A resource's own source position does not depend on the
  // limit (the SDK lifts it for that trace), and the engine records it as ever.
  const stackTraceLimit = Error.stackTraceLimit;
  const restore = () => void (Error.stackTraceLimit = stackTraceLimit);
  if (!process.env.PULUMI_DEBUG_PROMISE_LEAKS) Error.stackTraceLimit = 0;
  try {
    const { outputs, resources } = declare(plans, cacheDir, stateRoot, sitePolicyFile);
    all(resources.map((r) => r.urn)).apply(restore);
    return outputs;
  } catch (err) {
    restore();
    throw err;
  }
}

/** The snapshots a warm QEMU cluster's VMs restore, one VM's config for each (by key); none for a cold cluster. */
function snapshotsOf(plan: ClusterPlan): SnapshotAhead[] {
  if (!plan.model.environment.warm || plan.model.profile.hypervisor !== "qemu") return [];
  const { parseQemuConfig } = require("../drivers/qemu") as typeof import("../drivers/qemu");
  const { snapshotKey } = require("../drivers/qemu-warm") as typeof import("../drivers/qemu-warm");
  const byKey = new Map<string, SnapshotAhead>();
  for (const p of plan.vms) {
    const key = snapshotKey(parseQemuConfig(p.config).facts);
    if (!byKey.has(key)) byKey.set(key, { key, vm: p.vm.name, config: p.config });
  }
  return [...byKey.values()];
}

/**
 * The snapshots to stage to a warm cluster's hosts of their own, with its image: those the controller's
 * store has (`vse warm` made them) and those its Environment makes at this up (spec.warmAhead).
 */
function warmSnapshots(plan: ClusterPlan, wanted: SnapshotAhead[], cacheDir: string): { snapshotKeys?: string[] } {
  if (!wanted.length) return {};
  const { restoreUriOfKey } = require("../drivers/qemu-warm") as typeof import("../drivers/qemu-warm");
  const dir = path.join(cacheDir, "snapshots");
  // snapshotsOf gives each key once.
  const keys = wanted.filter((s) => plan.model.environment.warmAhead || restoreUriOfKey(dir, s.key)).map((s) => s.key);
  return keys.length ? { snapshotKeys: keys.sort() } : {};
}

/** Declares the resources of the planned clusters; returns the stack's outputs and the resources. */
function declare(
  plans: ClusterPlan[],
  cacheDir: string,
  stateRoot: string,
  sitePolicyFile: string | null,
): { outputs: Record<string, unknown>; resources: pulumi.CustomResource[] } {
  const resources: pulumi.CustomResource[] = [];
  const environments = new Map<string, Environment>();
  const profiles = new Map<string, VmProfile>();
  const vmsOut: Record<string, pulumi.Output<unknown>> = {};
  // One image per environment, and one more where a cluster adds its network to it ('+' cannot clash with a name).
  const envKeyOf = (plan: ClusterPlan) => (plan.extras ? `${plan.model.environment.name}+network` : plan.model.environment.name);
  // A cluster's snapshots, parsed from its configs at most once, and only where they are needed: for an
  // Environment that makes them ahead, and for staging to hosts of their own.
  const parsed = new Map<ClusterPlan, SnapshotAhead[]>();
  const wantedOf = (plan: ClusterPlan) => parsed.get(plan) ?? parsed.set(plan, snapshotsOf(plan)).get(plan)!;
  // What an environment asked to make its snapshots ahead makes: one per key over all the clusters that use it.
  const ahead = new Map<string, SnapshotAhead[]>();
  for (const plan of plans) {
    if (!plan.model.environment.warmAhead) continue;
    const list = ahead.get(envKeyOf(plan)) ?? [];
    for (const s of wantedOf(plan)) if (!list.some((x) => x.key === s.key)) list.push(s);
    ahead.set(envKeyOf(plan), list);
  }
  for (const plan of plans) {
    const m = plan.model;
    const envKey = envKeyOf(plan);
    let env = environments.get(envKey);
    if (!env) {
      const snapshots = ahead.get(envKey);
      env = new Environment(envKey, {
        spec: m.environment,
        imageId: plan.imageId,
        cacheDir,
        extras: plan.extras ?? null,
        ...(snapshots ? { snapshots: snapshots.sort((a, b) => a.key.localeCompare(b.key)) } : {}),
      });
      environments.set(envKey, env);
      resources.push(env);
    }
    let profile = profiles.get(m.profile.name);
    if (!profile) {
      profile = new VmProfile(m.profile.name, { spec: m.profile });
      profiles.set(m.profile.name, profile);
      resources.push(profile);
    }
    const cluster = new VirtualCluster(
      m.name,
      {
        name: m.name,
        stateRoot,
        project: getProject(),
        stack: getStack(),
        manager: m.allocation.manager,
        hosts: m.allocation.hosts,
        allocation: m.allocation,
        imageStore: path.join(cacheDir, "images"),
        sitePolicyFile,
        // Agents on declared hosts keep their own image stores: the cluster stages its image to them (after the Environment built it).
        ...(m.allocation.hostList ? { imageIds: [plan.imageId], ...warmSnapshots(plan, wantedOf(plan), cacheDir) } : {}),
        recovery: m.recovery,
        // For a policy pack: judged before the cluster's agents start (its VMs register only once they have).
        vmFacts: plan.vms.map((p) => ({
          vm: p.vm.name,
          host: p.vm.host,
          hypervisor: p.vm.profile.hypervisor,
          memoryMiB: p.vm.profile.memoryMiB,
          vcpus: p.vm.profile.vcpus,
          base: m.environment.base,
          ...(m.environment.debian?.mirror ? { mirror: m.environment.debian.mirror } : {}),
          kernelArgs: m.environment.kernelArgs,
        })),
      },
      // Its VMs wait for it (their agents come from it), so for its image and profile too: a VM lists one dependency, not three.
      { dependsOn: [env, profile] },
    );
    resources.push(cluster);
    for (const p of plan.vms) {
      const vm = new VirtualMachine(
        p.vm.name,
        vmInputs(m, p, {
          agentUrl: cluster.agents.apply((agents) => agents[p.vm.host].url),
          token: cluster.token,
          agentCa: cluster.ca,
          allocationRef: cluster.allocationRef,
        }),
        { parent: cluster },
      );
      resources.push(vm);
      vmsOut[p.vm.name] = all([vm.status, vm.jobOutput, vm.jobExitCode, vm.jobSeconds, vm.pid, vm.launch]).apply(
        ([status, output, exitCode, seconds, pid, launch]) => ({ status, output, exitCode, seconds, pid, launch }),
      );
    }
  }
  return { outputs: { vms: vmsOut }, resources };
}

// Pulumi takes the resolved object as the stack's outputs. It attaches its own handler a tick later;
// the no-op one here keeps Node from warning that a rejection (invalid definitions) was handled late.
const outputs = main();
outputs.catch(() => undefined);
export = outputs;
