// CPU seconds per process role while an engine operation runs: the engine (the `pulumi` CLI), the
// language host running the program, the dynamic-provider plugin, and the node agents. Sampled from
// /proc every 100 ms (a process's last sample counts), so a process that lives less than one period
// may be missed: the figures are a lower bound, good for where the time goes, not for billing.
import * as fs from "fs";

export type CpuRole = "engine" | "program" | "plugin" | "agents";

/** Which role a command line plays, or undefined for a process that is none of them. */
export function roleOf(cmdline: string): CpuRole | undefined {
  if (/cmd\/dynamic-provider/.test(cmdline)) return "plugin";
  if (/cmd\/run(\/index\.js)? |pulumi-language-nodejs/.test(cmdline)) return "program";
  if (/agent\/main\.js/.test(cmdline)) return "agents";
  if (/(^|\/)pulumi (up|preview|destroy|refresh) /.test(cmdline)) return "engine";
  return undefined;
}

function sample(into: Map<number, { role: CpuRole; seconds: number }>, ticks: number, within?: RegExp): void {
  for (const d of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmdline = fs.readFileSync(`/proc/${d}/cmdline`, "utf8").replace(/\0/g, " ");
      const role = roleOf(cmdline);
      if (!role || (within && !within.test(cmdline))) continue;
      // Fields after the command name: utime and stime are the 12th and 13th (man 5 proc).
      const f = fs.readFileSync(`/proc/${d}/stat`, "utf8").split(") ")[1].split(" ");
      into.set(Number(d), { role, seconds: (Number(f[11]) + Number(f[12])) / ticks });
    } catch {
      // The process ended between the listing and the read.
    }
  }
}

/**
 * Runs op while sampling; returns its result and the CPU seconds each role used during it (only what
 * was used after op began). within: only processes whose command line matches it (default: all).
 */
export async function withProcessCpu<T>(op: () => Promise<T>, within?: RegExp): Promise<{ result: T; cpu: Record<CpuRole, number> }> {
  const ticks = 100; // USER_HZ on Linux
  const before = new Map<number, { role: CpuRole; seconds: number }>();
  sample(before, ticks, within);
  const seen = new Map<number, { role: CpuRole; seconds: number }>();
  const timer = setInterval(() => sample(seen, ticks, within), 100);
  try {
    const result = await op();
    sample(seen, ticks, within);
    const cpu: Record<CpuRole, number> = { engine: 0, program: 0, plugin: 0, agents: 0 };
    for (const [pid, s] of seen) cpu[s.role] += s.seconds - (before.get(pid)?.seconds ?? 0);
    return { result, cpu };
  } finally {
    clearInterval(timer);
  }
}
