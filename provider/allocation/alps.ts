// The `alps` allocation manager (issue 10; seed 000: Torque and ALPS on Cray
// XT systems): a PBS job of nodes=<hosts>:ppn=1 whose script runs the agents
// on the compute nodes with ALPS, `aprun -n <hosts> -N 1` (one per node), each
// agent's state directory host-$ALPS_APP_PE in the spool directory. Submission
// and release are the batch-job core's (allocation/gridengine.ts), with PBS's
// commands (allocation/torque.ts). Not exercised against a real ALPS system:
// the script and commands are golden-tested.
import type { Allocator } from "./allocator";
import { agentTaskCommand, batchAllocator, BatchFlavour, BatchJob } from "./gridengine";
import { shellQuote } from "./ssh";
import { notGridEngine, pbsCommands, pbsDirectives } from "./torque";

/** The job script: aprun places one agent per node (-N 1) on hosts nodes (-n) of the PBS allocation and waits for them. */
export function alpsScript(j: BatchJob): string {
  const lines = [
    "#!/bin/sh",
    `# vse cluster ${j.clusterName} (${j.clusterKey}): one node agent per compute node (ALPS aprun inside PBS). Generated; do not edit.`,
    ...pbsDirectives("alps", j),
    "set -eu",
    `cd ${shellQuote(j.spoolDir)}`,
    `exec aprun -n ${j.hosts} -N 1 /bin/sh -c ${shellQuote(agentTaskCommand(j, "$ALPS_APP_PE"))}`,
  ];
  return `${lines.join("\n")}\n`;
}

export const alpsFlavour: BatchFlavour = {
  manager: "alps",
  script: alpsScript,
  commands: pbsCommands,
  install: "the PBS client of the Cray system's login node (qsub), with ALPS (aprun) on its service nodes",
  identify: notGridEngine,
};

export const alpsAllocator: Allocator = batchAllocator(alpsFlavour);
