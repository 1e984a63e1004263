// A real Grid Engine (Debian's gridengine-master, -exec, -client 8.1.9) on this
// machine for tests, set up idempotently: the cell's act_qmaster names this
// host, host_aliases maps "localhost" (what 127.0.0.1 resolves to first in
// /etc/hosts) to the host name (else commlib refuses every client: "client IP
// resolved to host name localhost. This is not identical to clients host
// name"), sge_qmaster and sge_execd run, this host is a submit and execution
// host, a queue vse.q with 8 slots and a parallel environment vse exist, and
// root may submit (min_uid 0). Commands are argument arrays; the queue and PE
// configurations are written to files read with qconf -A…
import * as fs from "fs";
import * as os from "os";
import * as path from "path";

export const SGE_ROOT = "/var/lib/gridengine";
export const SGE_CELL = "default";
export const GE_QUEUE = "vse.q";

async function run(file: string, args: string[], allowFail = false): Promise<{ exitCode: number; out: string }> {
  const execa = require("execa") as typeof import("execa");
  const r = await execa(file, args, { reject: false, timeout: 60000, stdin: "ignore", env: { SGE_ROOT, SGE_CELL } });
  const out = `${r.stdout}\n${r.stderr}`.trim();
  if (!allowFail && r.exitCode !== 0) throw new Error(`${file} ${args.join(" ")}: exit ${r.exitCode}: ${out}`);
  return { exitCode: r.exitCode ?? -1, out };
}

function daemonRunning(name: string): boolean {
  for (const e of fs.readdirSync("/proc")) {
    if (!/^[0-9]+$/.test(e)) continue;
    try {
      if (fs.readFileSync(`/proc/${e}/comm`, "utf8").trim() === name) return true;
    } catch {
      // ended
    }
  }
  return false;
}

async function waitFor(what: string, ok: () => Promise<boolean>, ms = 60000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`Grid Engine: ${what} did not happen within ${ms / 1000} s`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** Makes sure the daemons run and the queue takes jobs; returns the environment its commands need. */
export async function ensureGridEngine(): Promise<{ SGE_ROOT: string; SGE_CELL: string }> {
  if (!fs.existsSync("/usr/sbin/sge_qmaster"))
    throw new Error("Grid Engine is not installed: run scripts/setup.sh (gridengine-master, gridengine-exec, gridengine-client)");
  const host = os.hostname();
  const common = path.join(SGE_ROOT, SGE_CELL, "common");
  const aliases = path.join(common, "host_aliases");
  if (host !== "localhost" && !(fs.existsSync(aliases) && fs.readFileSync(aliases, "utf8").includes(`${host} localhost`)))
    fs.appendFileSync(aliases, `${host} localhost\n`);
  if (fs.readFileSync(path.join(common, "act_qmaster"), "utf8").trim() !== host) fs.writeFileSync(path.join(common, "act_qmaster"), `${host}\n`);
  if (!daemonRunning("sge_qmaster")) await run("/usr/sbin/sge_qmaster", []);
  await waitFor("sge_qmaster answering", async () => (await run("qconf", ["-sh"], true)).exitCode === 0);
  const conf = (await run("qconf", ["-sconf", "global"])).out;
  if (!/^min_uid\s+0$/m.test(conf) || !/^min_gid\s+0$/m.test(conf)) {
    const f = path.join(os.tmpdir(), `vse-sge-global-${process.pid}`);
    fs.writeFileSync(
      f,
      conf
        .replace(/^min_uid\s+.*$/m, "min_uid 0")
        .replace(/^min_gid\s+.*$/m, "min_gid 0")
        .replace(/^#.*\n/gm, ""),
    );
    await run("qconf", ["-Mconf", f, "global"]).finally(() => fs.rmSync(f, { force: true }));
  }
  if (!(await run("qconf", ["-ss"], true)).out.split("\n").includes(host)) await run("qconf", ["-as", host]);
  if (!(await run("qconf", ["-sel"], true)).out.split("\n").includes(host)) {
    const f = path.join(os.tmpdir(), `vse-sge-exec-${process.pid}`);
    fs.writeFileSync(
      f,
      `hostname ${host}\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n`,
    );
    await run("qconf", ["-Ae", f]).finally(() => fs.rmSync(f, { force: true }));
  }
  if (!(await run("qconf", ["-spl"], true)).out.split("\n").includes("vse")) {
    const f = path.join(os.tmpdir(), `vse-sge-pe-${process.pid}`);
    fs.writeFileSync(
      f,
      "pe_name vse\nslots 64\nuser_lists NONE\nxuser_lists NONE\nstart_proc_args NONE\nstop_proc_args NONE\nallocation_rule $round_robin\ncontrol_slaves TRUE\njob_is_first_task TRUE\nurgency_slots min\naccounting_summary FALSE\nqsort_args NONE\n",
    );
    await run("qconf", ["-Ap", f]).finally(() => fs.rmSync(f, { force: true }));
  }
  if (!(await run("qconf", ["-sql"], true)).out.split("\n").includes(GE_QUEUE)) {
    const f = path.join(os.tmpdir(), `vse-sge-q-${process.pid}`);
    fs.writeFileSync(
      f,
      [
        `qname ${GE_QUEUE}`,
        `hostlist ${host}`,
        "seq_no 0",
        "load_thresholds NONE",
        "suspend_thresholds NONE",
        "nsuspend 1",
        "suspend_interval 00:05:00",
        "priority 0",
        "min_cpu_interval 00:05:00",
        "processors UNDEFINED",
        "qtype BATCH INTERACTIVE",
        "ckpt_list NONE",
        "pe_list vse",
        "rerun FALSE",
        "slots 8",
        "tmpdir /tmp",
        "shell /bin/sh",
        "prolog NONE",
        "epilog NONE",
        "shell_start_mode unix_behavior",
        "starter_method NONE",
        "suspend_method NONE",
        "resume_method NONE",
        "terminate_method NONE",
        "notify 00:00:60",
        "owner_list NONE",
        "user_lists NONE",
        "xuser_lists NONE",
        "subordinate_list NONE",
        "complex_values NONE",
        "projects NONE",
        "xprojects NONE",
        "calendar NONE",
        "initial_state default",
        "s_rt INFINITY",
        "h_rt INFINITY",
        "s_cpu INFINITY",
        "h_cpu INFINITY",
        "s_fsize INFINITY",
        "h_fsize INFINITY",
        "s_data INFINITY",
        "h_data INFINITY",
        "s_stack INFINITY",
        "h_stack INFINITY",
        "s_core INFINITY",
        "h_core INFINITY",
        "s_rss INFINITY",
        "h_rss INFINITY",
        "s_vmem INFINITY",
        "h_vmem INFINITY",
        "",
      ].join("\n"),
    );
    await run("qconf", ["-Aq", f]).finally(() => fs.rmSync(f, { force: true }));
  }
  // Other tests load this machine heavily: no load threshold may put the queue in alarm and hold jobs back.
  if (!/^load_thresholds\s+NONE$/m.test((await run("qconf", ["-sq", GE_QUEUE])).out))
    await run("qconf", ["-rattr", "queue", "load_thresholds", "NONE", GE_QUEUE]);
  if (!daemonRunning("sge_execd")) {
    fs.mkdirSync("/var/spool/gridengine/execd", { recursive: true });
    await run("chown", ["sgeadmin", "/var/spool/gridengine/execd"]);
    await run("/usr/sbin/sge_execd", []);
  }
  // The queue instance takes jobs once execd has reported (no 'u'nknown / 'E'rror state).
  await waitFor(`queue ${GE_QUEUE}@${host} available`, async () => {
    const r = await run("qstat", ["-f", "-q", GE_QUEUE], true);
    const line = r.out.split("\n").find((l) => l.startsWith(`${GE_QUEUE}@`));
    return !!line && line.trim().split(/\s+/).length === 5;
  });
  process.env.SGE_ROOT = SGE_ROOT;
  process.env.SGE_CELL = SGE_CELL;
  return { SGE_ROOT, SGE_CELL };
}
