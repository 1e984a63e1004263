// The `torque` allocation manager (issue 10; seed 000 names Torque): the
// hosts are one Torque/PBS job of nodes=<hosts>:ppn=1, whose script starts one
// node agent per node with pbsdsh (each in the foreground of its task, its
// state directory host-$PBS_VNODENUM in the spool directory). The batch-job
// core (submission, waiting for the agents, release) is allocation/gridengine.ts.
// Not exercised against a real PBS server: the script and commands are
// golden-tested, and allocate runs the real qsub (it says what to install
// when there is none, and refuses Grid Engine's qsub).
import type { Allocator } from "./allocator";
import { agentTaskCommand, batchAllocator, BatchFlavour, BatchJob, checkBatchSettings, checkJobId, Command, jobName } from "./gridengine";
import { shellQuote } from "./ssh";

/** The #PBS directives of a job of hosts nodes, one task each: shared by Torque and ALPS (whose aprun runs inside a PBS job). */
export function pbsDirectives(manager: string, j: BatchJob): string[] {
  const s = checkBatchSettings(manager, j.settings);
  return [
    `#PBS -N ${jobName(j.clusterKey)}`,
    `#PBS -l nodes=${j.hosts}:ppn=1${s.walltime ? `,walltime=${s.walltime}` : ""}`,
    ...(s.queue ? [`#PBS -q ${s.queue}`] : []),
    ...(s.account ? [`#PBS -A ${s.account}`] : []),
    "#PBS -j oe",
    `#PBS -o ${j.spoolDir}/output/job.out`,
    "#PBS -S /bin/sh",
  ];
}

/** The Torque job script: pbsdsh -u starts the agent task once on every node of the job and waits for them all. */
export function torqueScript(j: BatchJob): string {
  const lines = [
    "#!/bin/sh",
    `# vse cluster ${j.clusterName} (${j.clusterKey}): one node agent per node (Torque/PBS, pbsdsh). Generated; do not edit.`,
    ...pbsDirectives("torque", j),
    "set -eu",
    `exec pbsdsh -u /bin/sh -c ${shellQuote(agentTaskCommand(j, "$PBS_VNODENUM"))}`,
  ];
  return `${lines.join("\n")}\n`;
}

export const pbsCommands = {
  submit: (script: string): Command => ({ file: "qsub", args: [script] }),
  /** Exit 0 while the server knows the job (qstat -f <id>), non-zero once it is gone. */
  query: (jobId: string): Command => ({ file: "qstat", args: ["-f", checkJobId(jobId)] }),
  cancel: (jobId: string): Command => ({ file: "qdel", args: [checkJobId(jobId)] }),
  /** PBS's qsub prints <sequence>.<server>. */
  parseJobId: (stdout: string): string => {
    const id = stdout.trim();
    if (!/^[0-9]{1,10}\.[A-Za-z0-9_.-]{1,64}$/.test(id))
      throw new Error(`qsub: expected a PBS job id <number>.<server>, found ${JSON.stringify(id.slice(0, 200))}`);
    return id;
  },
};

/** Grid Engine's qsub answers -help with its version ("SGE 8.1.9"): that one cannot take a PBS script. */
export function notGridEngine(help: string): string | undefined {
  return /^(SGE|GE|OGS|UGE|SoGE) [0-9]/m.test(help) ? "Grid Engine's qsub, not Torque/PBS's" : undefined;
}

export const torqueFlavour: BatchFlavour = {
  manager: "torque",
  script: torqueScript,
  commands: pbsCommands,
  install: "a Torque or OpenPBS client (Debian 12 has no Torque package: the site's PBS client, e.g. openpbs-client or torque-client)",
  identify: notGridEngine,
};

export const torqueAllocator: Allocator = batchAllocator(torqueFlavour);
