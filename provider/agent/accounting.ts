// Accounting of virtual against physical resources (seed 004): per VM process,
// the CPU time its hypervisor process used (/proc/<pid>/stat utime + stime),
// its configured memory and peak resident memory (/proc/<pid>/status VmHWM),
// and its wall time, on this host (host index, hostname) and under the
// scheduler's job when the agent was launched by one (SLURM_JOB_ID, PBS_JOBID,
// JOB_ID in its environment). Records are kept after the VM ends, in
// <stateDir>/accounting.json, so a finished job can still be accounted for.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import type { ConfigFacts } from "../drivers/qemu";
import { readJson, writeFileAtomic } from "./state";

export interface AccountingRecord {
  vm: string;
  /** The hypervisor process (QEMU) the figures are of; a restarted VM gets a record per process. */
  pid: number;
  startedAt: string;
  /** When the process ended (null while it runs). */
  endedAt: string | null;
  wallSeconds: number;
  /** utime + stime of the process: every vCPU thread and QEMU's own. */
  cpuSeconds: number;
  vcpus: number | null;
  /** Guest memory as configured (-m). */
  memoryMiB: number | null;
  /** Peak resident set of the process (VmHWM); null until sampled. */
  peakRssMiB: number | null;
  /** When the CPU and memory figures were last read; for an ended VM, its last reading before the end. */
  sampledAt: string | null;
}

export interface AccountingReport {
  /** The host (node agent index) from the agent's state directory (host-<n>), null when it is named otherwise. */
  host: number | null;
  hostname: string;
  /** The resource manager's job this agent runs in, from its environment; null outside one. */
  schedulerJobId: string | null;
  records: AccountingRecord[];
}

/** Records kept per agent: the oldest ended ones go first. */
export const MAX_RECORDS = 2000;
const SAMPLE_EVERY_MS = 1000;
const SCHEDULER_JOB_VARS = ["SLURM_JOB_ID", "PBS_JOBID", "JOB_ID"];
const JOB_ID_PATTERN = /^[A-Za-z0-9._[\]-]{1,64}$/;

let clockTicks: number | undefined;
/** Clock ticks per second of /proc's times (getconf CLK_TCK; 100 on Linux everywhere in practice). */
export function clkTck(): number {
  if (clockTicks === undefined) {
    try {
      const { execFileSync } = require("child_process") as typeof import("child_process");
      clockTicks = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** CPU seconds and start time (ticks since boot) of a live process, or undefined when it is gone. */
export function procTimes(pid: number): { cpuSeconds: number; startTicks: number } | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // f[0] is field 3 (state): utime is field 14, stime 15, starttime 22.
    return { cpuSeconds: (Number(f[11]) + Number(f[12])) / clkTck(), startTicks: Number(f[19]) };
  } catch {
    return undefined;
  }
}

/** Peak resident memory of a live process in MiB (VmHWM), or undefined. */
export function peakRssMiB(pid: number): number | undefined {
  try {
    const m = /^VmHWM:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Math.round((Number(m[1]) / 1024) * 10) / 10 : undefined;
  } catch {
    return undefined;
  }
}

export function schedulerJobId(env: NodeJS.ProcessEnv = process.env): string | null {
  for (const v of SCHEDULER_JOB_VARS) {
    const id = env[v];
    if (id !== undefined && JOB_ID_PATTERN.test(id)) return id;
  }
  return null;
}

interface Live {
  /** The process's start time: a pid reused by another process is never sampled as this VM. */
  startTicks?: number;
  samples: number;
}

export class Accounting {
  private records: AccountingRecord[];
  private live = new Map<AccountingRecord, Live>();
  private readonly file: string;
  private timer?: NodeJS.Timeout;
  private readonly host: number | null;

  constructor(stateDir: string) {
    this.file = path.join(stateDir, "accounting.json");
    this.records = readJson<{ records: AccountingRecord[] }>(this.file)?.records ?? [];
    const m = /^host-([0-9]+)$/.exec(path.basename(stateDir));
    this.host = m ? Number(m[1]) : null;
  }

  private open(vm: string): AccountingRecord | undefined {
    return this.records.find((r) => r.vm === vm && r.endedAt === null);
  }

  /** A VM's process is up (started or re-attached): a new record, or the open one of the same process. */
  started(vm: string, pid: number, startedAt: string | undefined, facts: ConfigFacts | undefined): void {
    const open = this.open(vm);
    if (open && open.pid === pid) {
      if (!this.live.has(open)) this.live.set(open, { samples: 0 });
    } else {
      if (open) this.ended(vm, new Date().toISOString());
      const r: AccountingRecord = {
        vm,
        pid,
        startedAt: startedAt ?? new Date().toISOString(),
        endedAt: null,
        wallSeconds: 0,
        cpuSeconds: 0,
        vcpus: facts?.vcpus ?? null,
        memoryMiB: facts?.memoryMiB ?? null,
        peakRssMiB: null,
        sampledAt: null,
      };
      this.records.push(r);
      this.live.set(r, { samples: 0 });
    }
    this.sample(vm);
    this.save();
    if (!this.timer) {
      this.timer = setInterval(() => this.sampleAll(), SAMPLE_EVERY_MS);
      this.timer.unref();
    }
  }

  /** Reads the process's figures now (before a stop, on a pause, periodically). */
  sample(vm: string): void {
    const r = this.open(vm);
    if (!r) return;
    const l = this.live.get(r) ?? { samples: 0 };
    this.live.set(r, l);
    const t = procTimes(r.pid);
    if (!t || (l.startTicks !== undefined && t.startTicks !== l.startTicks)) return;
    l.startTicks = t.startTicks;
    l.samples++;
    r.cpuSeconds = Math.max(r.cpuSeconds, Math.round(t.cpuSeconds * 100) / 100);
    const rss = peakRssMiB(r.pid);
    if (rss !== undefined) r.peakRssMiB = Math.max(r.peakRssMiB ?? 0, rss);
    r.sampledAt = new Date().toISOString();
    r.wallSeconds = wall(r, Date.now());
  }

  /** The VM's process ended (its driver reported the exit, or the agent removed it): its figures are final. */
  ended(vm: string, at: string): void {
    const r = this.open(vm);
    if (!r) return;
    // The process is gone: its last reading stands (taken at most SAMPLE_EVERY_MS before, or just before a stop by the agent).
    r.endedAt = at;
    r.wallSeconds = wall(r, Date.parse(at));
    this.live.delete(r);
    this.save();
  }

  private sampleAll(): void {
    const open = this.records.filter((r) => r.endedAt === null);
    for (const r of open) this.sample(r.vm);
    // Written now and then, not every second: a crash loses at most a few seconds of CPU time.
    if (open.some((r) => (this.live.get(r)?.samples ?? 0) % 10 === 1)) this.save();
  }

  report(): AccountingReport {
    const now = Date.now();
    for (const r of this.records) if (r.endedAt === null) this.sample(r.vm);
    return {
      host: this.host,
      hostname: os.hostname(),
      schedulerJobId: schedulerJobId(),
      records: this.records.map((r) => ({ ...r, wallSeconds: r.endedAt === null ? wall(r, now) : r.wallSeconds })),
    };
  }

  private save(): void {
    while (this.records.length > MAX_RECORDS) {
      const i = this.records.findIndex((r) => r.endedAt !== null);
      if (i < 0) break;
      this.records.splice(i, 1);
    }
    try {
      writeFileAtomic(this.file, JSON.stringify({ records: this.records }, null, 1));
    } catch {
      // Accounting never fails a VM operation; the next write retries with everything.
    }
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.save();
  }
}

function wall(r: AccountingRecord, now: number): number {
  return Math.max(0, Math.round((now - Date.parse(r.startedAt)) / 100) / 10);
}

/** What a VirtualMachine resource shows of its accounting: its last record on its host, with the host's identity. */
export interface VmAccounting extends Omit<AccountingRecord, "vm"> {
  host: number | null;
  hostname: string;
  schedulerJobId: string | null;
}

/** The latest record of vm in an agent's report, or null when the agent has none. */
export function vmAccounting(report: AccountingReport, vm: string): VmAccounting | null {
  const mine = report.records.filter((r) => r.vm === vm);
  const last = mine[mine.length - 1];
  if (!last) return null;
  const figures: Partial<AccountingRecord> = { ...last };
  delete figures.vm;
  return { host: report.host, hostname: report.hostname, schedulerJobId: report.schedulerJobId, ...(figures as Omit<AccountingRecord, "vm">) };
}
