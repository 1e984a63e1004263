// Types only: the package's index loads the whole SDK (automation API, closure serializer, TypeScript).
import type * as pulumi from "@pulumi/pulumi";
import { all } from "@pulumi/pulumi/output";
import type { VmSpec, VmView } from "../agent/protocol";
import { info, warn } from "./engine-log";
import { ModuleProviderResource } from "./provider-module";

/** Inputs of one VM; every key has a policy in provider/model/lifecycle.ts (VM_INPUT_POLICY). */
export interface VirtualMachineInputs {
  cluster: string;
  vmName: string;
  host: number;
  agentUrl: string;
  token: string;
  /** The cluster CA's certificate when the agent serves HTTPS (a host declared by address), else null. */
  agentCa: string | null;
  /** The cluster's scheduler allocation ("slurm:<job id>"), or null: with the agent gone, it tells an ended allocation from a lost agent. */
  allocationRef: string | null;
  hypervisor: string;
  imageId: string;
  memoryMiB: number;
  vcpus: number;
  machine: string;
  accel: string;
  kernelArgs: string;
  /** The rendered hypervisor config, line per option, so `preview --diff` shows which lines change. */
  config: string;
  markers: { begin: string; end: string };
  afterJob: "stay-up" | "power-off";
  jobTimeoutSeconds: number;
  /** running (also when absent, as in states written before it existed) or paused: changed in place (pause/resume of the same process). */
  state?: "running" | "paused";
  /** A warm environment's job (its argv and environment are not in its image): handed to the guest after the restore; null otherwise. */
  job?: { command: string[]; env: Record<string, string> } | null;
}

/**
 * A VM's outputs: its inputs as recorded, and what was observed. The rendered config is recorded by
 * its digest only (configDigest): the inputs keep its text, which `preview --diff` shows line by line,
 * and diff only compares it. States written before configDigest hold the text here as `config`.
 */
export interface VirtualMachineOutputs extends Omit<VirtualMachineInputs, "config"> {
  config?: string;
  /** sha256 (hex) of the config the VM was last applied with. */
  configDigest?: string;
  /** Observed state: running, completed (powered off after its job), failed, stopped, missing, unreachable. */
  status: string;
  pid: number | null;
  /** How many times the agent has started this VM's QEMU. */
  starts: number;
  jobOutput: string | null;
  jobExitCode: number | null;
  /** Seconds from the request to the agent until the job's result appeared. */
  jobSeconds: number | null;
  message: string | null;
  /** How the VM's current process came up: "warm" (restored from a pre-booted snapshot) or "cold" (booted). An output, never an input change. */
  launch: "warm" | "cold" | null;
  /** CPU, memory and wall time of the VM's last process on its host (agent/accounting.ts); refreshed by read, never an input. */
  accounting?: import("../agent/accounting").VmAccounting | null;
}

type Args = { [K in keyof VirtualMachineInputs]: pulumi.Input<VirtualMachineInputs[K]> };
/** The outputs that are observed, not inputs recorded. */
type Observed = "status" | "pid" | "starts" | "jobOutput" | "jobExitCode" | "jobSeconds" | "message" | "launch" | "accounting";

const INPUT_KEYS: (keyof VirtualMachineInputs)[] = [
  "cluster",
  "vmName",
  "host",
  "agentUrl",
  "token",
  "agentCa",
  "allocationRef",
  "hypervisor",
  "imageId",
  "memoryMiB",
  "vcpus",
  "machine",
  "accel",
  "kernelArgs",
  "config",
  "markers",
  "afterJob",
  "jobTimeoutSeconds",
  "state",
  "job",
];

/** What an input an older stack did not record meant: a VM then always ran; the rest were absent (null). */
const RECORDED_BEFORE: Partial<Record<keyof VirtualMachineInputs, unknown>> = { state: "running", job: null };

function configDigest(config: string): string {
  const { createHash } = require("crypto") as typeof import("crypto");
  return createHash("sha256").update(config).digest("hex");
}

/** The digest of the config a state or the inputs hold (states before configDigest hold its text). */
function configDigestOf(i: VirtualMachineInputs | VirtualMachineOutputs): string | null {
  return (i as VirtualMachineOutputs).configDigest ?? (typeof i.config === "string" ? configDigest(i.config) : null);
}

/** Inputs as the state records them: all but the config, which is recorded by its digest. */
function recorded(i: VirtualMachineInputs | VirtualMachineOutputs): Omit<VirtualMachineOutputs, Observed> {
  const rest: Partial<VirtualMachineOutputs> = { ...i };
  delete rest.config;
  const digest = configDigestOf(i);
  // An undefined value cannot cross to the engine (protobuf Struct): absent, not undefined.
  return (digest === null ? rest : { ...rest, configDigest: digest }) as Omit<VirtualMachineOutputs, Observed>;
}

/** Inputs whose value differs, an unrecorded input counting as what it meant then. */
function changedInputs(olds: VirtualMachineOutputs, news: VirtualMachineInputs): (keyof VirtualMachineInputs)[] {
  const value = (i: VirtualMachineOutputs | VirtualMachineInputs, k: keyof VirtualMachineInputs) =>
    k === "config" ? configDigestOf(i) : JSON.stringify(i[k] ?? RECORDED_BEFORE[k] ?? null);
  return INPUT_KEYS.filter((k) => value(olds, k) !== value(news, k));
}

const STOP_GRACE_SECONDS = 1;
/** How often a VM still booting says so in the engine's output. */
const PROGRESS_EVERY_MS = 10000;
/** How the engine passes a value not known yet (e.g. an output of a resource being replaced) to a dynamic provider. */
const UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The VM's agent, over its unix socket or over HTTPS with the cluster's CA pinned. */
function clientOf(i: Pick<VirtualMachineInputs, "agentUrl" | "token" | "agentCa">): import("../agent/client").AgentClient {
  const { agentClient } = require("../allocation/allocator") as typeof import("../allocation/allocator");
  return agentClient(i.agentUrl, i.token, i.agentCa);
}

export function specOf(inputs: VirtualMachineInputs): VmSpec {
  return {
    hypervisor: inputs.hypervisor,
    config: inputs.config,
    markers: inputs.markers,
    stopGraceSeconds: STOP_GRACE_SECONDS,
    afterJob: inputs.afterJob,
    // Absent when running, so that specs of running VMs stay as they were.
    ...(inputs.state === "paused" ? { state: "paused" as const } : {}),
    ...(inputs.job ? { job: inputs.job } : {}),
  };
}

function statusOf(v: VmView): string {
  if (v.observed.state === "exited" && v.job.state === "done") return "completed";
  if (v.observed.state === "starting") return "running";
  return v.observed.state;
}

function outputsFrom(
  inputs: VirtualMachineInputs | VirtualMachineOutputs,
  v: VmView | undefined,
  jobSeconds: number | null,
  fallbackStatus = "missing",
): VirtualMachineOutputs {
  return {
    ...recorded(inputs),
    status: v ? statusOf(v) : fallbackStatus,
    pid: v?.observed.pid ?? null,
    starts: v?.observed.starts ?? 0,
    jobOutput: v?.job.state === "done" ? (v.job.output ?? "") : null,
    jobExitCode: v?.job.state === "done" ? (v.job.exitCode ?? null) : null,
    jobSeconds,
    message: v?.observed.message ?? null,
    launch: v?.observed.launch ?? null,
  };
}

/** The agent's accounting of this VM, or null when the agent has none (or is older than accounting). */
async function accountingOf(client: import("../agent/client").AgentClient, vmName: string): Promise<VirtualMachineOutputs["accounting"]> {
  const { vmAccounting } = require("../agent/accounting") as typeof import("../agent/accounting");
  try {
    return vmAccounting(await client.request("GET", "/v1/accounting", undefined, 10000), vmName);
  } catch {
    return null;
  }
}

/** Sends the desired state and waits for the job's result. A create that fails for any reason removes the VM again. */
async function apply(inputs: VirtualMachineInputs, previous?: VirtualMachineOutputs): Promise<VirtualMachineOutputs> {
  const outs = await applyState(inputs, previous);
  return { ...outs, accounting: await accountingOf(clientOf(inputs), inputs.vmName) };
}

async function applyState(inputs: VirtualMachineInputs, previous?: VirtualMachineOutputs): Promise<VirtualMachineOutputs> {
  const client = clientOf(inputs);
  const t0 = Date.now();
  let v: VmView | undefined;
  try {
    const before = await client.getVm(inputs.vmName);
    const view = await client.putVm(inputs.vmName, specOf(inputs));
    const restarted = !before || view.observed.starts !== before.observed.starts;
    if (!restarted && previous) return outputsFrom(inputs, view, previous.jobSeconds);
    // A paused guest makes no progress: there is no job result to wait for.
    if (inputs.state === "paused") return outputsFrom(inputs, view, null);

    const deadline = t0 + inputs.jobTimeoutSeconds * 1000;
    let nextProgress = t0 + PROGRESS_EVERY_MS;
    let pollMs = 10;
    v = view;
    let doneAt: number | undefined;
    for (;;) {
      if (v?.job.state === "done") {
        doneAt ??= Date.now();
        // A guest that powers off after its job has not finished until its process has ended: recording it as running (with the pid of a process about to end) would be wrong.
        const poweringOff = inputs.afterJob === "power-off" && (v.observed.state === "running" || v.observed.state === "starting");
        if (!poweringOff) return outputsFrom(inputs, v, (doneAt - t0) / 1000);
        if (Date.now() > deadline)
          throw new Error(`VM ${inputs.vmName}: its job reported a result but the guest did not power off within ${inputs.jobTimeoutSeconds} s`);
        await sleep(100);
        v = await client.getVm(inputs.vmName);
        continue;
      }
      if (v && (v.observed.state === "failed" || v.observed.state === "exited" || v.observed.state === "stopped")) {
        throw new Error(`VM ${inputs.vmName} ended before its job reported a result: ${v.observed.message ?? v.observed.state}`);
      }
      if (Date.now() > deadline)
        throw new Error(`VM ${inputs.vmName}: no job result within ${inputs.jobTimeoutSeconds} s (Environment spec.job.timeoutSeconds)`);
      if (Date.now() >= nextProgress) {
        nextProgress += PROGRESS_EVERY_MS;
        const last = (v?.consoleTail ?? "").trim().split("\n").pop()?.slice(0, 100) ?? "";
        await info(
          `VM ${inputs.vmName}: ${v?.observed.state ?? "starting"} for ${Math.round((Date.now() - t0) / 1000)} s, waiting for its job's result${last ? ` (console: ${last})` : ""}`,
        );
      }
      // Often for the first 2 s (a warm VM answers within a fraction of a second, and the result is seen only
      // at a poll: each interval rounds the launch time up), then every 100 ms.
      await sleep(pollMs);
      pollMs = Date.now() - t0 < 2000 ? Math.min(25, pollMs * 2) : 100;
      v = await client.getVm(inputs.vmName);
    }
  } catch (err) {
    throw await fail(client, inputs, v, (err as Error).message, !previous);
  }
}

async function fail(
  client: import("../agent/client").AgentClient,
  inputs: VirtualMachineInputs,
  v: VmView | undefined,
  message: string,
  creating: boolean,
): Promise<Error> {
  // A failed create must not leave an orphan behind on the agent; a failed update stays in the state, and refresh shows it.
  if (creating) {
    await client
      .deleteVm(inputs.vmName)
      .catch((err: Error) =>
        warn(`VM ${inputs.vmName}: its create failed and removing it again failed too: ${err.message}; \`pulumi refresh\` then \`pulumi up\` retries`),
      );
  }
  const tail = v?.consoleTail ? `\nlast console lines:\n${v.consoleTail}` : "";
  return new Error(message + tail);
}

export async function vmCreate(inputs: VirtualMachineInputs): Promise<pulumi.dynamic.CreateResult> {
  return { id: `${inputs.cluster}/${inputs.vmName}`, outs: await apply(inputs) };
}

export async function vmDiff(olds: VirtualMachineOutputs, news: VirtualMachineInputs): Promise<pulumi.dynamic.DiffResult> {
  const { vmEffectiveChange } = require("../model/lifecycle") as typeof import("../model/lifecycle");
  const changed = changedInputs(olds, news);
  // An agent URL not known yet (in a preview) means the cluster's agents are being replaced.
  const agentsReplaced = (news.agentUrl as string) === UNKNOWN;
  const { replaces } = vmEffectiveChange(changed, { hypervisor: news.hypervisor, agentsReplaced });
  // Drift found by refresh (the VM died or vanished) is repaired by an update.
  // A VM paused (or running) against its declared state drifted as well.
  const drifted = !(olds.status === "completed" || olds.status === (news.state === "paused" ? "paused" : "running"));
  return { changes: changed.length > 0 || drifted, replaces, deleteBeforeReplace: replaces.length > 0 };
}

/**
 * Moves a running VM from the source agent to the target without a reboot
 * (QEMU live migration). Safe to repeat after an interruption: a target that
 * already runs the VM means an earlier attempt landed (the source's copy is
 * then removed); a target still waiting from an earlier attempt is dropped
 * first. When the migration fails the VM keeps running on the source and no
 * waiting target is left.
 */
export async function moveVm(
  source: import("../agent/client").AgentClient,
  target: import("../agent/client").AgentClient,
  name: string,
  spec: VmSpec,
): Promise<{ view: VmView; totalMs: number; downtimeMs: number }> {
  const there = await target.getVm(name);
  if (there?.observed.state === "running" && !there.observed.incoming) {
    await source.deleteVm(name);
    return { view: await target.putVm(name, spec), totalMs: 0, downtimeMs: 0 };
  }
  if (there) await target.deleteVm(name);
  const landing = await target.incoming(name, spec);
  try {
    const m = await source.migrate(name, landing.observed.incoming!);
    return { view: await target.putVm(name, spec), ...m };
  } catch (err) {
    await target.deleteVm(name).catch((e: Error) => warn(`VM ${name}: the failed migration's waiting target could not be removed: ${e.message}`));
    throw err;
  }
}

async function migrate(olds: VirtualMachineOutputs, news: VirtualMachineInputs): Promise<VirtualMachineOutputs> {
  const m = await moveVm(clientOf(olds), clientOf(news), news.vmName, specOf(news));
  return {
    ...outputsFrom(news, m.view, olds.jobSeconds),
    jobOutput: olds.jobOutput,
    jobExitCode: olds.jobExitCode,
    launch: olds.launch,
    message: `migrated from host ${olds.host} in ${m.totalMs} ms (downtime ${m.downtimeMs} ms)`,
  };
}

/** Whether the old config differs from the new one only in the NICs' host address. */
async function configMovesOnly(olds: VirtualMachineOutputs, news: VirtualMachineInputs, landed: VmView | undefined): Promise<boolean> {
  const { sameBesidesHostAddress } = require("../drivers/network") as typeof import("../drivers/network");
  // A state records the config by its digest (states before configDigest: its text); the text is what the source's agent runs.
  let old = olds.config;
  if (old === undefined) {
    const v = await clientOf(olds)
      .getVm(olds.vmName)
      .catch(() => undefined);
    if (v && configDigest(v.spec.config) === olds.configDigest) old = v.spec.config;
  }
  if (old !== undefined) return sameBesidesHostAddress(old, news.config);
  // The source has it no more: a target that runs exactly the new config is this update's move, interrupted after it landed.
  return landed?.spec.config === news.config;
}

export async function vmUpdate(olds: VirtualMachineOutputs, news: VirtualMachineInputs): Promise<pulumi.dynamic.UpdateResult> {
  const { vmChange } = require("../model/lifecycle") as typeof import("../model/lifecycle");
  const changed = changedInputs(olds, news);
  if (vmChange(changed).policy === "migrate") {
    // A running guest whose config is otherwise unchanged moves live; anything else starts afresh on the new host.
    // A NIC's host address is part of placement too: the target binds it to its own address (drivers/network.ts).
    const placement = changed.every((k) => ["host", "agentUrl", "token", "jobTimeoutSeconds", "config"].includes(k));
    // A migration that an interruption cut short may have landed already: then the VM runs on the target and is only adopted.
    const there = placement
      ? await clientOf(news)
          .getVm(news.vmName)
          .catch(() => undefined)
      : undefined;
    const landed = there?.observed.state === "running" && !there.observed.incoming;
    const onlyPlacement = placement && (!changed.includes("config") || (await configMovesOnly(olds, news, landed ? there : undefined)));
    if (onlyPlacement && (olds.status === "running" || landed)) return { outs: await migrate(olds, news) };
    const outs = await apply(news);
    await clientOf(olds)
      .deleteVm(olds.vmName)
      .catch((e: Error) =>
        warn(`VM ${olds.vmName}: started afresh on host ${news.host}, but its old copy on host ${olds.host} could not be removed: ${e.message}`),
      );
    return { outs };
  }
  return { outs: await apply(news, olds) };
}

export async function vmDelete(props: VirtualMachineOutputs): Promise<void> {
  const { AgentError } = require("../agent/client") as typeof import("../agent/client");
  try {
    await clientOf(props).deleteVm(props.vmName);
  } catch (err) {
    if (!(err instanceof AgentError && err.status === 0)) throw err;
    // The scheduler ended the allocation: its agents powered their guests off as it ended, so nothing of the VM runs.
    const ended = await endedAllocation(props);
    if (ended) {
      await info(`VM ${props.vmName}: its allocation ended (${ended}) and its agent with it; nothing left to remove`);
      return;
    }
    // An agent on another host: its state is not here to act on, and a VM left behind must not be forgotten.
    if (!props.agentUrl.startsWith("unix:"))
      throw new Error(
        `VM ${props.vmName}: cannot remove it, the agent of host ${props.host} is unreachable (${err.message}); ` +
          "`pulumi up --refresh` restarts the cluster's agents; then retry",
      );
    // With its agent dead, the agent's own code removes the VM here, through the same drivers; nothing is left running.
    const { withOfflineAgent } = require("../allocation/local") as typeof import("../allocation/local");
    const path = require("path") as typeof import("path");
    const fs = require("fs") as typeof import("fs");
    const stateDir = path.dirname(props.agentUrl.replace(/^unix:/, ""));
    if (!fs.existsSync(stateDir)) return; // the whole host is gone already
    const clusterKey = /^vse1\.([0-9a-f]{10})\./.exec(props.token)?.[1] ?? "";
    await withOfflineAgent(stateDir, clusterKey, (agent) => agent.delete(props.vmName));
    await warn(`VM ${props.vmName}: its agent was unreachable (${err.message}); removed it through the drivers directly`);
  }
}

export async function vmRead(id: string, props: VirtualMachineOutputs): Promise<pulumi.dynamic.ReadResult> {
  const { AgentError } = require("../agent/client") as typeof import("../agent/client");
  try {
    const client = clientOf(props);
    const v = await client.getVm(props.vmName);
    const read = outputsFrom(props, v, props.jobSeconds);
    // A VM the cluster's recovery restarted elsewhere keeps saying so on every refresh, until `up` moves it back.
    if (read.message === null && props.message?.startsWith(`restarted on host ${props.host} `)) read.message = props.message;
    return { id, props: { ...read, accounting: await accountingOf(client, props.vmName) } };
  } catch (err) {
    if (!(err instanceof AgentError && err.status === 0)) throw err;
    const ended = await endedAllocation(props);
    if (ended) return { id, props: { ...props, status: "stopped", pid: null, message: `allocation ended: ${ended}; its agent powered the guest off` } };
    const fate = await recoveryFate(props);
    if (fate?.host !== undefined && fate.agentUrl) {
      // Restarted by the cluster's recovery: the recorded host and agent follow where it runs now (refresh shows the move;
      // the next `pulumi up` moves it back to its declared host if that host's agent is back, or fails saying why).
      const moved = { ...props, host: fate.host, agentUrl: fate.agentUrl };
      const v = await clientOf(moved)
        .getVm(props.vmName)
        .catch(() => undefined);
      return { id, props: { ...outputsFrom(moved, v, props.jobSeconds, "lost"), message: fate.message } };
    }
    if (fate) return { id, props: { ...props, status: fate.status, pid: null, message: fate.message } };
    return { id, props: { ...props, status: "unreachable", pid: null, message: err.message } };
  }
}

/** What the cluster's failure record (agent/recovery.ts) says happened to a VM whose agent does not answer. */
async function recoveryFate(props: VirtualMachineOutputs): Promise<ReturnType<typeof import("../agent/recovery").vmFate>> {
  const { clusterAgentsOf, readClusterFailures, vmFate } = require("../agent/recovery") as typeof import("../agent/recovery");
  const key = /^vse1\.([0-9a-f]{10})\./.exec(props.token)?.[1];
  const index = key ? clusterAgentsOf(key) : undefined;
  if (!index) return undefined;
  const record = await readClusterFailures(index, props.token).catch(() => undefined);
  return record ? vmFate(record.failures, props.vmName, props.agentUrl, index.urls) : undefined;
}

/** Why the VM's scheduler allocation ended, when it has one and it did; undefined otherwise (also when the scheduler cannot tell). */
async function endedAllocation(props: VirtualMachineOutputs): Promise<string | undefined> {
  if (!props.allocationRef) return undefined;
  const { allocationEnded } = require("../allocation/allocator") as typeof import("../allocation/allocator");
  return allocationEnded(props.allocationRef).catch((e: Error) => {
    void warn(`VM ${props.vmName}: could not ask the scheduler about allocation ${props.allocationRef}: ${e.message}`);
    return undefined;
  });
}

/** What the dynamic-provider plugin runs for a VM: each VM's state names this module by path (provider-module.ts). */
export const provider: pulumi.dynamic.ResourceProvider = {
  create: (inputs) => vmCreate(inputs),
  diff: (_id, olds, news) => vmDiff(olds, news),
  update: (_id, olds, news) => vmUpdate(olds, news),
  delete: (_id, props) => vmDelete(props),
  read: (id, props) => vmRead(id, props),
};

/** One virtual machine of a cluster, kept in its desired state by the agent of its host. */
export class VirtualMachine extends ModuleProviderResource {
  declare readonly status: pulumi.Output<string>;
  declare readonly pid: pulumi.Output<number | null>;
  declare readonly starts: pulumi.Output<number>;
  declare readonly jobOutput: pulumi.Output<string | null>;
  declare readonly jobExitCode: pulumi.Output<number | null>;
  declare readonly jobSeconds: pulumi.Output<number | null>;
  declare readonly config: pulumi.Output<string>;
  declare readonly launch: pulumi.Output<"warm" | "cold" | null>;
  declare readonly accounting: pulumi.Output<import("../agent/accounting").VmAccounting | null>;

  constructor(name: string, args: Args, opts?: pulumi.CustomResourceOptions) {
    const outs = {
      status: undefined,
      pid: undefined,
      starts: undefined,
      jobOutput: undefined,
      jobExitCode: undefined,
      jobSeconds: undefined,
      message: undefined,
      launch: undefined,
      accounting: undefined,
    };
    super("VirtualMachine", __filename, name, { ...args, ...outs }, { ...opts, additionalSecretOutputs: ["token"] });
    // The state records the config by its digest: the text is the input's, once the VM is registered (in a preview too).
    this.config = all([this.urn, args.config]).apply(([, config]) => config);
  }
}
