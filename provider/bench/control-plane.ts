// The 1,000-VM control plane, measured with the real engine on STAND-IN guests: the agents are
// started with --standin-guests (provider/drivers/standin.ts), so every VM is a real supervised
// process (`sleep`) that prints its job's markers at once, and nothing is booted. What is measured is
// the engine, the program, the provider and the agents: `pulumi up` of 1,000 VMs on a fresh stack, a
// no-op `pulumi preview`, a `pulumi up` that changes one VM, and the checkpoint's bytes per VM.
import * as fs from "fs";
import * as path from "path";
import { engineEnv, openStack, PROJECT_ROOT } from "../cli/engine";
import { breakdown, Breakdown, checkpointFile, timed } from "./engine-timeline";
import { CpuRole, withProcessCpu } from "./process-cpu";

export const CONTROL_PLANE_TARGETS = { previewSeconds: 10, changeOneSeconds: 15, checkpointBytesPerVm: 2048 };

/** The schema allows 256 nodes per cluster: 4 clusters of 250, 4 hosts (agents) each. */
const CLUSTERS = 4;
const NODES = 250;
const HOSTS = 4;

function definitions(changed: boolean): string {
  const doc = (kind: string, name: string, spec: string) => `apiVersion: vse.dev/v1\nkind: ${kind}\nmetadata: { name: ${name} }\nspec: ${spec}\n`;
  return [
    doc("Environment", "cp-env", `{ job: { command: ["/bin/true"], afterJob: stay-up, timeoutSeconds: 300 } }`),
    doc("VmProfile", "cp-profile", `{ hypervisor: qemu, memory: 64MiB, vcpus: 1, machine: pc, accel: tcg }`),
    ...Array.from({ length: CLUSTERS }, (_, i) =>
      doc(
        "VirtualCluster",
        `cp${i}`,
        `{ environment: cp-env, profile: cp-profile, nodes: ${NODES}, allocation: { manager: local, hosts: ${HOSTS} }` +
          // The one change: VM 0 of cluster 0 gets more memory (its config changes, the agent restarts it).
          (changed && i === 0 ? `, overrides: [{ vm: 0, memory: 96MiB }]` : "") +
          " }",
      ),
    ),
  ].join("---\n");
}

export interface ControlPlaneResult {
  guest: string;
  vms: number;
  clusters: number;
  agents: number;
  up: { seconds: number; breakdown: Breakdown };
  preview: { seconds: number; engineProcess: number; breakdown: Breakdown; cpu?: Record<CpuRole, number> };
  changeOne: { seconds: number; engineProcess: number; breakdown: Breakdown; changed: number; cpu?: Record<CpuRole, number> };
  checkpoint: { bytes: number; bytesPerVm: number; perVm?: CheckpointShare };
  /** `pulumi destroy` with PULUMI_SKIP_CHECKPOINTS=true (cleanup; only the final checkpoint is written). */
  destroySeconds: number;
  /** A fresh `pulumi up` of the same VMs with PULUMI_SKIP_CHECKPOINTS=true (only the final checkpoint written). */
  upSkipCheckpoints: { seconds: number; breakdown: Breakdown };
}

/** Where a VM's bytes in the checkpoint go (compact JSON, mean over the VMs), the rest of the file spread over the VMs as `other`. */
export interface CheckpointShare {
  /** The VM's inputs (ours), of which `__provider`, the serialized provider. */
  inputs: number;
  outputs: number;
  provider: number;
  /** What the engine records beside them: URN, type, id, parent, provider reference, dependencies, property dependencies, source position and stack trace, timestamps. */
  engine: Record<string, number>;
  /** The stack's outputs (one entry per VM), other resources and the file's framing, per VM. */
  other: number;
}

/** Splits a checkpoint's bytes among its VirtualMachine resources' fields. */
export function checkpointShare(file: string): CheckpointShare {
  const raw = fs.readFileSync(file, "utf8");
  const resources = (JSON.parse(raw).checkpoint?.latest?.resources ?? []) as Record<string, unknown>[];
  const vms = resources.filter((r) => String(r.type).endsWith(":VirtualMachine"));
  const n = Math.max(1, vms.length);
  const size = (v: unknown) => Buffer.byteLength(JSON.stringify(v));
  // A field costs its value, its quoted key, a colon and a comma.
  const field = (k: string, v: unknown) => size(v) + k.length + 4;
  const share: CheckpointShare = { inputs: 0, outputs: 0, provider: 0, engine: {}, other: 0 };
  let counted = 0;
  for (const r of vms) {
    for (const [k, v] of Object.entries(r)) {
      const bytes = field(k, v);
      counted += bytes;
      if (k === "inputs") share.inputs += bytes;
      else if (k === "outputs") share.outputs += bytes;
      else share.engine[k] = (share.engine[k] ?? 0) + bytes;
      if ((k === "inputs" || k === "outputs") && v && typeof v === "object" && "__provider" in v)
        share.provider += field("__provider", (v as Record<string, unknown>).__provider);
    }
  }
  const mean = (x: number) => Math.round(x / n);
  return {
    inputs: mean(share.inputs),
    outputs: mean(share.outputs),
    provider: mean(share.provider),
    engine: Object.fromEntries(Object.entries(share.engine).map(([k, v]) => [k, mean(v)])),
    other: mean(Buffer.byteLength(raw) - counted),
  };
}

export interface FloorResult {
  resources: number;
  /** A fresh up with PULUMI_SKIP_CHECKPOINTS=true. */
  upSkipCheckpointsSeconds: number;
  upSeconds: number;
  previewSeconds: number;
  changeOneSeconds: number;
  checkpoint: { bytes: number; bytesPerResource: number };
  upBreakdown: Breakdown;
  previewBreakdown: Breakdown;
  changeOneBreakdown: Breakdown;
  previewCpu?: Record<CpuRole, number>;
  changeOneCpu?: Record<CpuRole, number>;
}

/** The engine's floor at the same scale: the same three operations on 1,000 trivial dynamic resources (provider/bench/floor/trivial). */
export async function controlPlaneFloor(tmp: string, log: (m: string) => void = console.log): Promise<FloorResult> {
  const dir = fs.mkdtempSync(path.join(tmp, "cpf-"));
  const name = `cpf-${path.basename(dir).slice(4)}`.toLowerCase().replace(/[^a-z0-9-]/g, "");
  const backend = path.join(dir, "backend");
  const workDir = path.join(PROJECT_ROOT, "provider", "bench", "floor", "trivial");
  const project = "vse-bench-floor-trivial";
  const stack = await openStack(name, engineEnv({ backendUrl: `file://${backend}`, passphrase: "bench" }), workDir);
  const n = CLUSTERS * NODES;
  try {
    await stack.setAllConfig({ [`${project}:count`]: { value: String(n) } });
    log(`engine floor: pulumi up of ${n} trivial dynamic resources…`);
    const up = await timed(stack, (onEvent) => stack.up({ onEvent }));
    log(`  up: ${up.timeline.wall.toFixed(1)} s`);
    const bytes = fs.statSync(checkpointFile(backend, project, name)).size;
    const { result: preview, cpu: previewCpu } = await withProcessCpu(() => timed(stack, (onEvent) => stack.preview({ onEvent })));
    log(`  preview: ${preview.timeline.wall.toFixed(1)} s (CPU ${JSON.stringify(previewCpu)})`);
    await stack.setConfig(`${project}:changed`, { value: "true" });
    const { result: change, cpu: changeOneCpu } = await withProcessCpu(() => timed(stack, (onEvent) => stack.up({ onEvent })));
    log(`  change one: ${change.timeline.wall.toFixed(1)} s (${JSON.stringify(change.result.summary.resourceChanges)})`);
    stack.workspace.envVars.PULUMI_SKIP_CHECKPOINTS = "true";
    await stack.destroy();
    const upNoCkpt = await timed(stack, (onEvent) => stack.up({ onEvent }));
    log(`  up without checkpoints: ${upNoCkpt.timeline.wall.toFixed(1)} s`);
    await stack.destroy();
    return {
      upSkipCheckpointsSeconds: upNoCkpt.timeline.wall,
      resources: n,
      upSeconds: up.timeline.wall,
      previewSeconds: preview.timeline.wall,
      changeOneSeconds: change.timeline.wall,
      checkpoint: { bytes, bytesPerResource: bytes / n },
      upBreakdown: breakdown(up.timeline),
      previewBreakdown: breakdown(preview.timeline, "preview"),
      changeOneBreakdown: breakdown(change.timeline),
      previewCpu,
      changeOneCpu,
    };
  } catch (err) {
    await stack.destroy().catch(() => undefined);
    throw err;
  } finally {
    await stack.workspace.removeStack(name).catch(() => undefined);
    fs.rmSync(path.join(workDir, `Pulumi.${name}.yaml`), { force: true });
  }
}

export async function controlPlane(tmp: string, log: (m: string) => void = console.log): Promise<ControlPlaneResult> {
  const dir = fs.mkdtempSync(path.join(tmp, "cp-"));
  const defs = path.join(dir, "defs");
  fs.mkdirSync(defs);
  fs.writeFileSync(path.join(defs, "clusters.yaml"), definitions(false));
  const name = `cp-${path.basename(dir).slice(3)}`.toLowerCase().replace(/[^a-z0-9-]/g, "");
  const backend = path.join(dir, "backend");
  // The provider starts its agents with --standin-guests only when this is set (allocation/local.ts).
  const env = { ...engineEnv({ backendUrl: `file://${backend}`, passphrase: "bench" }), VSE_BENCH_STANDIN_GUESTS: "1" };
  const stack = await openStack(name, env);
  const vms = CLUSTERS * NODES;
  try {
    await stack.setAllConfig({ "vse:definitions": { value: defs }, "vse:stateDir": { value: path.join(dir, "state") } });

    log(`control plane: pulumi up of ${vms} stand-in VMs (fresh stack)…`);
    const up = await timed(stack, (onEvent) => stack.up({ onEvent }));
    const outs = up.result.outputs.vms.value as Record<string, { output: string | null; status: string }>;
    const bad = Object.entries(outs).filter(([, v]) => v.status !== "running" || v.output === null);
    if (Object.keys(outs).length !== vms || bad.length)
      throw new Error(`control plane: ${bad.length} of ${Object.keys(outs).length} VMs not running with a job result`);
    log(`  up: ${up.timeline.wall.toFixed(1)} s`);
    const bytes = fs.statSync(checkpointFile(backend, "vse", name)).size;
    const perVm = checkpointShare(checkpointFile(backend, "vse", name));
    log(`  checkpoint: ${Math.round(bytes / vms)} B per VM ${JSON.stringify(perVm)}`);

    log("control plane: no-op pulumi preview…");
    const { result: preview, cpu: previewCpu } = await withProcessCpu(() => timed(stack, (onEvent) => stack.preview({ onEvent })));
    const pchanges = preview.result.changeSummary;
    if (Object.keys(pchanges).some((k) => k !== "same")) throw new Error(`control plane: the no-op preview plans changes: ${JSON.stringify(pchanges)}`);
    log(`  preview: ${preview.timeline.wall.toFixed(1)} s (CPU ${JSON.stringify(previewCpu)})`);

    log("control plane: pulumi up that changes one VM…");
    fs.writeFileSync(path.join(defs, "clusters.yaml"), definitions(true));
    const { result: change, cpu: changeOneCpu } = await withProcessCpu(() => timed(stack, (onEvent) => stack.up({ onEvent })));
    const changed = Object.entries(change.result.summary.resourceChanges ?? {})
      .filter(([k]) => k !== "same")
      .reduce((n, [, c]) => n + (c ?? 0), 0);
    log(`  change one: ${change.timeline.wall.toFixed(1)} s (${JSON.stringify(change.result.summary.resourceChanges)})`);

    log("control plane: destroy (PULUMI_SKIP_CHECKPOINTS=true: only the final checkpoint is written)…");
    stack.workspace.envVars.PULUMI_SKIP_CHECKPOINTS = "true";
    const t0 = process.hrtime.bigint();
    await stack.destroy();
    const destroySeconds = Number(process.hrtime.bigint() - t0) / 1e9;
    // The price of the engine's checkpoint writes at this scale: the same fresh up, writing only the final checkpoint.
    log("control plane: pulumi up again, fresh, with PULUMI_SKIP_CHECKPOINTS=true…");
    const upNoCkpt = await timed(stack, (onEvent) => stack.up({ onEvent }));
    log(`  up without checkpoints: ${upNoCkpt.timeline.wall.toFixed(1)} s`);
    await stack.destroy();
    const main = (tl: typeof preview.timeline, op: string) => tl.commands.find((c) => c.args.startsWith(op))!;
    return {
      guest: "stand-in process (`sleep`, provider/drivers/standin.ts): no VM is booted",
      vms,
      clusters: CLUSTERS,
      agents: CLUSTERS * HOSTS,
      up: { seconds: up.timeline.wall, breakdown: breakdown(up.timeline) },
      preview: {
        seconds: preview.timeline.wall,
        engineProcess: main(preview.timeline, "preview").end - main(preview.timeline, "preview").start,
        breakdown: breakdown(preview.timeline, "preview"),
        cpu: previewCpu,
      },
      changeOne: {
        seconds: change.timeline.wall,
        engineProcess: main(change.timeline, "up").end - main(change.timeline, "up").start,
        breakdown: breakdown(change.timeline),
        changed,
        cpu: changeOneCpu,
      },
      checkpoint: { bytes, bytesPerVm: bytes / vms, perVm },
      destroySeconds,
      upSkipCheckpoints: { seconds: upNoCkpt.timeline.wall, breakdown: breakdown(upNoCkpt.timeline) },
    };
  } catch (err) {
    await stack.destroy().catch(() => undefined);
    throw err;
  } finally {
    await stack.workspace.removeStack(name).catch(() => undefined);
    fs.rmSync(path.join(PROJECT_ROOT, `Pulumi.${name}.yaml`), { force: true });
  }
}

/** A line for the results: where a VM's checkpoint bytes go. */
export function checkpointShareMarkdown(perVm: CheckpointShare | undefined, floorBytesPerResource: number): string[] {
  if (!perVm) return [];
  const e = perVm.engine;
  const engineTotal = Object.values(e).reduce((a, b) => a + b, 0);
  const top = Object.entries(e)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${v} B`)
    .join(", ");
  return [
    `Where a VM's checkpoint bytes go (compact JSON, mean per VM): inputs ${perVm.inputs} B and outputs ${perVm.outputs} B (ours; of both, the serialized provider \`__provider\` ${perVm.provider} B); ` +
      `the engine's own fields ${engineTotal} B (${top}); the stack's outputs, the other resources and the file's framing ${perVm.other} B. ` +
      `For comparison, a trivial dynamic resource of the floor takes ${Math.round(floorBytesPerResource)} B.`,
    "",
  ];
}
