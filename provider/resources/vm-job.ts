// VmJob (issue 10, seed 003): a VM job through Slurm as a Pulumi resource, so
// that job output and exit status are Pulumi outputs. Create submits the job
// array (provider/job/submit.ts) and waits until Slurm has run it; the outputs
// are every guest's output and exit code. A job is one run: any change of its
// inputs replaces it (runs it again). Delete scancels the job if Slurm still
// lists it (the runners then power their guests down) and waits until it is gone.
import * as pulumi from "@pulumi/pulumi";

export interface VmJobInputs {
  /** Definition files or directories holding the cluster, its environment and profile. */
  definitions: string[];
  cluster: string;
  jobs: number;
  vmsPerSlot: number;
  partition?: string;
  cacheDir?: string;
  stateDir?: string;
  sitePolicyFile?: string;
}

export interface VmJobVmOutput {
  task: number;
  node: string;
  vm: string;
  state: string;
  exitCode: number | null;
  output: string | null;
}

export interface VmJobOutputs extends VmJobInputs {
  slurmJobId: string;
  /** One per guest, by task then VM. */
  vms: VmJobVmOutput[];
  /** The same, flattened: exitCodes[i] and outputs[i] belong to vms[i]. */
  exitCodes: (number | null)[];
  outputs: (string | null)[];
  /** Slurm's final state per array task (COMPLETED, FAILED, CANCELLED…). */
  taskStates: string[];
}

export async function vmJobCreate(inputs: VmJobInputs): Promise<pulumi.dynamic.CreateResult> {
  const { prepareVmJob, submitVmJob } = require("../job/submit") as typeof import("../job/submit");
  const prep = await prepareVmJob(inputs.definitions, {
    cluster: inputs.cluster,
    jobs: inputs.jobs,
    vmsPerSlot: inputs.vmsPerSlot,
    partition: inputs.partition,
    cacheDir: inputs.cacheDir,
    stateRoot: inputs.stateDir,
    sitePolicyFile: inputs.sitePolicyFile,
  });
  const job = await submitVmJob(prep);
  const r = await job.done;
  const vms: VmJobVmOutput[] = r.tasks.flatMap((t) =>
    t.vms.map((v) => ({ task: t.task, node: t.node, vm: v.name, state: v.state, exitCode: v.exitCode, output: v.output })),
  );
  const missing = r.tasks.filter((t) => !t.vms.length);
  if (missing.length)
    throw new Error(
      `VmJob ${inputs.cluster} (Slurm job ${r.jobId}): task(s) ${missing.map((t) => `${t.task} (${t.state}): ${t.log.trim().split("\n").slice(-3).join(" / ")}`).join("; ")} gave no result`,
    );
  const outs: VmJobOutputs = {
    ...inputs,
    slurmJobId: r.jobId,
    vms,
    exitCodes: vms.map((v) => v.exitCode),
    outputs: vms.map((v) => v.output),
    taskStates: r.tasks.map((t) => t.state),
  };
  return { id: `${inputs.cluster}-${r.jobId}`, outs };
}

export async function vmJobDiff(olds: VmJobOutputs, news: VmJobInputs): Promise<pulumi.dynamic.DiffResult> {
  const keys: (keyof VmJobInputs)[] = ["definitions", "cluster", "jobs", "vmsPerSlot", "partition", "cacheDir", "stateDir", "sitePolicyFile"];
  const changed = keys.filter((k) => JSON.stringify(olds[k] ?? null) !== JSON.stringify(news[k] ?? null));
  return { changes: changed.length > 0, replaces: changed, deleteBeforeReplace: true };
}

export async function vmJobDelete(olds: VmJobOutputs): Promise<void> {
  const { cancelAndWait } = require("../allocation/slurm") as typeof import("../allocation/slurm");
  if (olds.slurmJobId) await cancelAndWait(olds.slurmJobId);
}

const MODULE = __filename;

const provider: pulumi.dynamic.ResourceProvider = {
  create: (inputs) => require(MODULE).vmJobCreate(inputs),
  diff: (_id, olds, news) => require(MODULE).vmJobDiff(olds, news),
  delete: (_id, olds) => require(MODULE).vmJobDelete(olds),
};

/** VM jobs through Slurm: a job array of `jobs` slots, `vmsPerSlot` guests each; outputs are every guest's output and exit code. */
export class VmJob extends pulumi.dynamic.Resource {
  declare readonly slurmJobId: pulumi.Output<string>;
  declare readonly vms: pulumi.Output<VmJobVmOutput[]>;
  declare readonly exitCodes: pulumi.Output<(number | null)[]>;
  declare readonly outputs: pulumi.Output<(string | null)[]>;
  declare readonly taskStates: pulumi.Output<string[]>;

  constructor(name: string, args: { [K in keyof VmJobInputs]: pulumi.Input<VmJobInputs[K]> }, opts?: pulumi.CustomResourceOptions) {
    super(
      provider,
      name,
      { ...args, slurmJobId: undefined, vms: undefined, exitCodes: undefined, outputs: undefined, taskStates: undefined },
      { ...opts, hideDiffs: ["__provider"] },
      "vse",
      "VmJob",
    );
  }
}
