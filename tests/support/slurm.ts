// The real Slurm test cluster of scripts/slurm-up.sh (munged, slurmctld, a
// slurmd in each namespace host vse-tslm-h<i>): started if it is not up
// (idempotent, quick when it is), and what tests ask Slurm directly.
import * as fs from "fs";
import * as path from "path";

const ROOT = path.resolve(__dirname, "..", "..");
export const SLURM_CONF = "/var/lib/vse-slurm/slurm.conf";
/** The namespace hosts' tag of the Slurm nodes (scripts/slurm-up.sh): they persist while tests run. */
export const SLURM_TAG = "tslm";

/** Makes sure the daemons run and every node is idle or in use; points Slurm's clients (and the agents' launchers) at the test cluster. */
export async function ensureSlurm(): Promise<void> {
  const execa = require("execa") as typeof import("execa");
  if (!process.env.SLURM_CONF && !fs.existsSync("/etc/slurm/slurm.conf")) process.env.SLURM_CONF = SLURM_CONF;
  process.env.SLURM_CONF ??= SLURM_CONF;
  const r = await execa("bash", [path.join(ROOT, "scripts", "slurm-up.sh")], { reject: false, all: true, timeout: 600000 });
  if (r.exitCode !== 0) throw new Error(`scripts/slurm-up.sh failed (exit ${r.exitCode}):\n${r.all}`);
}

/** The jobs squeue lists under a name: [id, state]. */
export async function jobsNamed(name: string): Promise<[string, string][]> {
  const execa = require("execa") as typeof import("execa");
  const r = await execa("squeue", ["-h", "-n", name, "-o", "%i %T"]);
  return r.stdout
    .split("\n")
    .filter(Boolean)
    .map((l) => l.trim().split(/\s+/) as [string, string]);
}

/** The network namespace a process runs in (its inode link). */
export function netnsOf(pid: number): string {
  return fs.readlinkSync(`/proc/${pid}/ns/net`);
}
