// Failure detection at N = 256 and 1,024 (`npm run bench -- --only detection`, issue 9;
// VSE_BENCH_DETECTION_AGENTS=256,512,1024 to choose): detection latency (an
// agent ends as by SIGKILL → the first report recorded by the coordinator, and
// → the k-th of its watchers' reports), heartbeat bytes per second per agent,
// and what the beats cost in CPU (per beat, and as cores for the whole
// cluster) once every watch is up. A run that does not settle (not every
// agent hears its peers within VSE_BENCH_DETECTION_WARMUP_S, default 180 s,
// or live peers are suspected while only beats flow) says so and measures no
// crash.
//
// 1,024 agent daemons do not fit in memory, so the agents share one process
// per namespace host (provider/bench/failure-detection-host.ts), each agent
// with its own HTTPS listener (own port on the host's address) and running the
// real provider/agent/heartbeat.ts. Hosts: namespace hosts (tag bfd, subnet
// 10.214.2.0/24); agent a lives on host a mod H. Bytes are counted twice: on
// the wire (tx bytes of every namespace's eth0 and lo over a quiet window:
// TLS records, TCP/IP headers and ACKs included) and as beat payload.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as readline from "readline";
import { AgentClient } from "../agent/client";
import type { FailureView } from "../agent/heartbeat";
import { binomialWatchers, HEARTBEAT_DEFAULTS } from "../agent/heartbeat";
import { newClusterToken } from "../agent/protocol";
import { netnsExec, setUpNetnsHosts, tearDownNetnsHosts } from "../allocation/netns";
import { ensureClusterCa, issueServerCert } from "../allocation/tls";
import { clusterKey } from "../drivers/network";
import type { BenchHostConfig } from "./failure-detection-host";

const execa = require("execa") as typeof import("execa");

export const DETECTION_TARGETS = { detectionSeconds: 3 };
const TAG = "bfd";
const SUBNET = "10.214.2.0/24";
const BASE_PORT = 20000;
const HOST_MAIN = path.resolve(__dirname, "failure-detection-host.js");

export interface DetectionTrial {
  victim: number;
  watchers: number;
  /** Seconds from the crash to each watcher's report being recorded at the coordinator, in order. */
  recordedSeconds: number[];
  /** Seconds from the crash to each watcher's own detection, in order. */
  detectedSeconds: number[];
  routes: number[][];
}

export interface DetectionRun {
  agents: number;
  hosts: number;
  agentsPerProcess: number;
  periodMs: number;
  suspectMs: number;
  watchersPerAgent: number;
  /** The machine's 1-minute load average when this N began (other work shares the 2 cores). */
  loadAverage: number;
  /** Every agent heard each of its peers within the warm-up limit, and no live peer was suspected in the quiet window. */
  settled: boolean;
  /** Start → every agent heard each of its peers once (or the warm-up limit, when not settled). */
  warmupSeconds: number;
  /** Agents that had heard each of their peers by then. */
  heardAll: number;
  /** Watch handshakes begun until then (n × watches when none had to be retried). */
  handshakes: number;
  trials: DetectionTrial[];
  firstReportSeconds: { median: number; max: number; all: number[] };
  /** Median over trials of the time to the k-th report (k = 1..watchers). */
  kthReportSeconds: number[];
  allReportsSeconds: { median: number; max: number };
  bytes: { windowSeconds: number; wirePerAgentPerSecond: number; payloadPerAgentPerSecond: number; beatsPerAgentPerSecond: number };
  /**
   * CPU of the benchmark's host processes over the quiet window (beats only): per beat (its sending and its
   * receiving, TLS and the kernel's work in the processes' system time included), the cores that took, and how late
   * the processes' event loops ran (max over processes).
   */
  cpu: { microsPerBeat: number; coresUsed: number; beatsPerSecond: number; loopDelayP99Ms: number; loopDelayMaxMs: number };
  /** Suspicions of live peers in the quiet window (each one a report). */
  windowSuspicions: number;
  /** Live agents the coordinator recorded lost during the run; null when an overloaded coordinator did not answer. */
  falseSuspicions: number[] | null;
}

export interface DetectionResult extends DetectionRun {
  /** Every N run, smallest first; the fields above are the largest N that settled (or the largest N). */
  sweep: DetectionRun[];
  note: string;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** tx bytes of a namespace's interfaces (eth0 to the bridge, lo between agents of the same host). */
async function txBytes(netns: string): Promise<number> {
  const r = await execa("ip", ["-j", "-s", "-n", netns, "link", "show"]);
  const links = JSON.parse(r.stdout) as { ifname: string; stats64?: { tx: { bytes: number } } }[];
  return links.reduce((s, l) => s + (l.stats64?.tx.bytes ?? 0), 0);
}

interface HostProc {
  index: number;
  netns: string;
  child: import("execa").ExecaChildProcess;
  events: Record<string, unknown>[];
  waiters: { pred: (e: Record<string, unknown>) => boolean; resolve: (e: Record<string, unknown>) => void }[];
}

function command(h: HostProc, cmd: Record<string, unknown>): void {
  h.child.stdin!.write(JSON.stringify(cmd) + "\n");
}

function nextEvent(h: HostProc, pred: (e: Record<string, unknown>) => boolean, ms = 120000): Promise<Record<string, unknown>> {
  const i = h.events.findIndex(pred);
  if (i >= 0) return Promise.resolve(h.events.splice(i, 1)[0]);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`benchmark host ${h.index}: no answer within ${ms} ms`)), ms);
    h.waiters.push({
      pred,
      resolve: (e) => {
        clearTimeout(timer);
        resolve(e);
      },
    });
  });
}

type DetectionOptions = { hosts?: number; trials?: number; periodMs?: number; suspectMs?: number; warmupLimitSeconds?: number; log?: (m: string) => void };

/**
 * Runs each N of VSE_BENCH_DETECTION_AGENTS (comma-separated; default 256,1024) in turn, on VSE_BENCH_DETECTION_HOSTS
 * namespace hosts (default 16); the result is the largest N that settled, with every N's run in sweep.
 */
export async function failureDetection(tmp: string, o: DetectionOptions & { agents?: number[] } = {}): Promise<DetectionResult> {
  const ns =
    o.agents ??
    (process.env.VSE_BENCH_DETECTION_AGENTS ?? "256,1024")
      .split(",")
      .map((x) => Number(x.trim()))
      .sort((a, b) => a - b);
  const sweep: DetectionRun[] = [];
  for (const n of ns) sweep.push(await detectionRun(tmp, n, o));
  const main = [...sweep].reverse().find((r) => r.settled) ?? sweep[sweep.length - 1];
  return {
    ...main,
    sweep,
    note:
      `agents share one process per namespace host (${main.agentsPerProcess} per process at N = ${main.agents}, ${main.hosts} hosts: provider/bench/failure-detection-host.ts), ` +
      "each with its own HTTPS listener and port and the real provider/agent/heartbeat.ts; a crash closes the agent's listener and sockets at once, as SIGKILL does",
  };
}

async function detectionRun(tmp: string, n: number, o: DetectionOptions): Promise<DetectionRun> {
  const H = o.hosts ?? Number(process.env.VSE_BENCH_DETECTION_HOSTS ?? 16);
  if (!Number.isInteger(n) || !Number.isInteger(H) || H < 2 || H > 200 || n < H || n % H !== 0)
    throw new Error(`detection benchmark: expected agents a multiple of hosts (2 to 200), found ${n} agents on ${H} hosts`);
  const periodMs = o.periodMs ?? HEARTBEAT_DEFAULTS.periodMs;
  const suspectMs = o.suspectMs ?? HEARTBEAT_DEFAULTS.suspectMs;
  // A cluster that has not settled by then will not: the run then reports how far it got and what the beats cost.
  const warmupLimitMs = 1000 * (o.warmupLimitSeconds ?? Number(process.env.VSE_BENCH_DETECTION_WARMUP_S ?? 180));
  const log = o.log ?? ((m: string) => console.log(m));
  const loadAverage = os.loadavg()[0];
  const dir = fs.mkdtempSync(path.join(tmp, "detection-"));
  await tearDownNetnsHosts(TAG);
  const procs: HostProc[] = [];
  try {
    const net = await setUpNetnsHosts({ tag: TAG, count: H, subnet: SUBNET });
    const key = clusterKey("bench", "detection", "fd");
    const token = newClusterToken(key);
    const ca = await ensureClusterCa(path.join(dir, "ca"), key);
    const urls = Array.from({ length: n }, (_, a) => `https://${net.hosts[a % H].address}:${BASE_PORT + Math.floor(a / H)}`);
    for (const h of net.hosts) {
      const cert = await issueServerCert(ca, h.address, path.join(dir, "certs", `h${h.index}`));
      const cfg: BenchHostConfig = {
        address: h.address,
        agents: Array.from({ length: n }, (_, a) => a)
          .filter((a) => a % H === h.index)
          .map((a) => ({ host: a, port: BASE_PORT + Math.floor(a / H) })),
        urls,
        token,
        clusterKey: key,
        caFile: ca.certFile,
        certFile: cert.certFile,
        keyFile: cert.keyFile,
        periodMs,
        suspectMs,
        // 10,240 watches connect at once at the start: none is judged before it was heard once.
        startupGraceMs: 600000,
      };
      const cfgFile = path.join(dir, `host-${h.index}.json`);
      fs.writeFileSync(cfgFile, JSON.stringify(cfg), { mode: 0o600 });
      const cmd = netnsExec(h.netns, [process.execPath, HOST_MAIN, cfgFile]);
      const child = execa(cmd.file, cmd.args, { stdin: "pipe", stdout: "pipe", stderr: "inherit", reject: false, buffer: false });
      const p: HostProc = { index: h.index, netns: h.netns, child, events: [], waiters: [] };
      readline.createInterface({ input: child.stdout! }).on("line", (line) => {
        const e = JSON.parse(line) as Record<string, unknown>;
        const w = p.waiters.findIndex((x) => x.pred(e));
        if (w >= 0) p.waiters.splice(w, 1)[0].resolve(e);
        else p.events.push(e);
      });
      procs.push(p);
    }
    await Promise.all(procs.map((p) => nextEvent(p, (e) => e.ready === true)));
    log(`${n} heartbeat agents listening on ${H} namespace hosts (${n / H} per process)`);
    const t0 = Date.now();
    for (const p of procs) command(p, { cmd: "start" });
    const stats = async () => {
      const all = await Promise.all(
        procs.map((p) => {
          command(p, { cmd: "stats" });
          return nextEvent(p, (e) => e.stats !== undefined).then((e) => e.stats as Record<string, number>);
        }),
      );
      const sum: Record<string, number> = {};
      // Counters add up over the processes; the event loop's delay is the worst process's.
      for (const s of all) for (const [k, v] of Object.entries(s)) sum[k] = k.startsWith("loopDelay") ? Math.max(sum[k] ?? 0, v) : (sum[k] ?? 0) + v;
      return sum;
    };
    let s = await stats();
    let lastLog = Date.now();
    while (s.heardAll < n && Date.now() - t0 < warmupLimitMs) {
      await sleep(1000);
      s = await stats();
      if (Date.now() - lastLog >= 15000) {
        lastLog = Date.now();
        log(`N=${n}: ${s.heardAll} of ${n} agents have heard every peer they watch (${s.handshakes} handshakes, ${s.suspicions} suspicions)`);
      }
    }
    const warmupSeconds = (Date.now() - t0) / 1000;
    const heardAll = s.heardAll;
    const handshakes = s.handshakes;
    if (heardAll === n) log(`N=${n}: every agent has heard each of its ${binomialWatchers(0, n).length} peers ${warmupSeconds.toFixed(1)} s after the start`);
    else log(`N=${n}: NOT SETTLED: only ${heardAll} of ${n} agents heard every peer they watch within ${warmupSeconds.toFixed(0)} s`);
    // A quiet window: beats only.
    await sleep(3000);
    const windowMs = 10000;
    const tx0 = await Promise.all(procs.map((p) => txBytes(p.netns)));
    const s0 = await stats();
    const w0 = Date.now();
    await sleep(windowMs);
    const tx1 = await Promise.all(procs.map((p) => txBytes(p.netns)));
    const s1 = await stats();
    const secs = (Date.now() - w0) / 1000;
    const wire = tx1.reduce((a, b) => a + b, 0) - tx0.reduce((a, b) => a + b, 0);
    const bytes = {
      windowSeconds: secs,
      wirePerAgentPerSecond: wire / n / secs,
      payloadPerAgentPerSecond: (s1.payloadBytesSent - s0.payloadBytesSent) / n / secs,
      beatsPerAgentPerSecond: (s1.beatsSent - s0.beatsSent) / n / secs,
    };
    const beats = s1.beatsReceived - s0.beatsReceived;
    const cpu = {
      microsPerBeat: (s1.cpuMicros - s0.cpuMicros) / Math.max(1, beats),
      coresUsed: (s1.cpuMicros - s0.cpuMicros) / 1e6 / secs,
      beatsPerSecond: beats / secs,
      loopDelayP99Ms: s1.loopDelayP99Ms,
      loopDelayMaxMs: s1.loopDelayMaxMs,
    };
    const windowSuspicions = s1.suspicions - s0.suspicions;
    const settled = heardAll === n && windowSuspicions === 0;
    log(
      `N=${n}: heartbeat bytes per agent per second: ${bytes.wirePerAgentPerSecond.toFixed(0)} B on the wire, ${bytes.payloadPerAgentPerSecond.toFixed(0)} B of beats; ` +
        `${cpu.beatsPerSecond.toFixed(0)} beats/s received, ${cpu.microsPerBeat.toFixed(0)} µs CPU per beat, ${cpu.coresUsed.toFixed(2)} cores; ` +
        `event loop delay p99 ${cpu.loopDelayP99Ms.toFixed(0)} ms, max ${cpu.loopDelayMaxMs.toFixed(0)} ms; ${windowSuspicions} suspicions in the window; load average ${os.loadavg()[0].toFixed(2)}`,
    );

    const coordinator = new AgentClient(urls[0], token, { ca: fs.readFileSync(ca.certFile, "utf8") });
    const trials: DetectionTrial[] = [];
    // Victims spread over the ring and over the hosts; never the coordinator. None when the cluster did not settle: its latencies would measure the overload.
    const victims = settled ? [101, 347, 578, 806, 1001, 230, 690].map((v) => v % n).slice(0, o.trials ?? 5) : [];
    for (const victim of victims) {
      const p = procs[victim % H];
      command(p, { cmd: "crash", agent: victim });
      const at = (await nextEvent(p, (e) => e.crashed === victim)).at as number;
      // Watchers crashed in an earlier trial cannot report.
      const watchers = binomialWatchers(victim, n).filter((w) => !trials.some((t) => t.victim === w)).length;
      let rec: FailureView["failures"][number] | undefined;
      const end = Date.now() + 30000;
      while (Date.now() < end) {
        const v = await coordinator.request<FailureView>("GET", "/v1/cluster/failures", undefined, 5000).catch(() => undefined);
        rec = v?.failures.find((f) => f.host === victim);
        if (rec && rec.detectedBy.length >= watchers) break;
        await sleep(100);
      }
      if (!rec) {
        const v = await coordinator.request<FailureView>("GET", "/v1/cluster/failures", undefined, 10000).catch((e: Error) => e.message);
        throw new Error(`agent ${victim}: no report reached the coordinator within 30 s; its record: ${JSON.stringify(v).slice(0, 2000)}`);
      }
      const recorded = rec.detectedBy.map((d) => (Date.parse(d.receivedAt) - at) / 1000).sort((a, b) => a - b);
      const detected = rec.detectedBy.map((d) => (Date.parse(d.detectedAt) - at) / 1000).sort((a, b) => a - b);
      trials.push({ victim, watchers, recordedSeconds: recorded, detectedSeconds: detected, routes: rec.detectedBy.map((d) => d.route) });
      log(
        `N=${n}: agent ${victim} crashed: first report at the coordinator after ${recorded[0].toFixed(2)} s, ${recorded.length}/${watchers} watchers reported, the last after ${recorded[recorded.length - 1].toFixed(2)} s`,
      );
    }
    // Hosts recorded lost that were never crashed: a starved event loop's beats came too late (false suspicions).
    const all = await coordinator.request<FailureView>("GET", "/v1/cluster/failures", undefined, 30000).catch((err: Error) => {
      if (settled) throw err;
      log(`N=${n}: the coordinator's failure record could not be read: ${err.message}`);
      return undefined;
    });
    const falseSuspicions = all ? all.failures.map((f) => f.host).filter((h) => !victims.includes(h)) : null;
    const firsts = trials.map((t) => t.recordedSeconds[0]);
    const maxK = binomialWatchers(0, n).length;
    const kth = Array.from({ length: maxK }, (_, k) => median(trials.map((t) => t.recordedSeconds[k] ?? NaN).filter((x) => !isNaN(x))));
    const lasts = trials.map((t) => t.recordedSeconds[t.recordedSeconds.length - 1]);
    return {
      agents: n,
      hosts: H,
      agentsPerProcess: n / H,
      periodMs,
      suspectMs,
      watchersPerAgent: maxK,
      loadAverage,
      settled,
      warmupSeconds,
      heardAll,
      handshakes,
      trials,
      firstReportSeconds: { median: median(firsts), max: Math.max(...firsts), all: firsts },
      kthReportSeconds: kth,
      allReportsSeconds: { median: median(lasts), max: Math.max(...lasts) },
      bytes,
      cpu,
      windowSuspicions,
      falseSuspicions,
    };
  } finally {
    for (const p of procs) {
      p.child.stdin?.end();
      p.child.kill("SIGTERM", { forceKillAfterTimeout: 5000 });
    }
    await Promise.all(procs.map((p) => p.child.catch(() => undefined)));
    await tearDownNetnsHosts(TAG);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export function detectionMarkdown(r: DetectionResult & { date: string }): string[] {
  const t = DETECTION_TARGETS.detectionSeconds;
  const s2 = (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)} s` : "–");
  const f0 = (x: number | undefined) => (x !== undefined && Number.isFinite(x) ? x.toFixed(0) : "–");
  const verdict = (x: number) => (x <= t ? "met" : `**not met**: ${s2(x - t)} over`);
  const k = r.kthReportSeconds;
  // Results of an earlier layout have no sweep: the one N stands alone.
  const sweep: Partial<DetectionRun>[] = r.sweep ?? [r];
  const out = [
    `**Failure detection** (${r.date.slice(0, 10)}; heartbeats every ${r.periodMs} ms, suspected after ${r.suspectMs} ms of silence; each agent watches ⌈log2 N⌉ peers over a TLS stream of its own). ${r.note}.`,
    "",
    "| N | agents per process | TLS watches | settled | start → every agent heard all its peers | crash → first report, median (max) | heartbeat bytes per agent per second on the wire (of which beats) | beats/s in the cluster | CPU per beat (send + receive) | cores used by heartbeats | event loop delay p99 (max) | load average |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ...sweep.map((x) => {
      const settled =
        x.settled === undefined
          ? "yes"
          : x.settled
            ? "yes"
            : `**no**: ${x.heardAll} of ${x.agents} heard all their peers in ${f0(x.warmupSeconds)} s; ${x.windowSuspicions} suspicions of live peers in 10 s`;
      const first = x.trials?.length ? `${s2(x.firstReportSeconds!.median)} (${s2(x.firstReportSeconds!.max)})` : "not measured";
      return `| ${x.agents} | ${x.agentsPerProcess} | ${x.agents! * x.watchersPerAgent!} | ${settled} | ${s2(x.warmupSeconds!)} | ${first} | ${f0(x.bytes?.wirePerAgentPerSecond)} B/s (${f0(x.bytes?.payloadPerAgentPerSecond)} B/s) | ${f0(x.cpu?.beatsPerSecond)} | ${x.cpu ? `${f0(x.cpu.microsPerBeat)} µs` : "–"} | ${x.cpu ? x.cpu.coresUsed.toFixed(2) : "–"} | ${x.cpu ? `${f0(x.cpu.loopDelayP99Ms)} ms (${f0(x.cpu.loopDelayMaxMs)} ms)` : "–"} | ${x.loadAverage?.toFixed(2) ?? "–"} |`;
    }),
    "",
  ];
  if (!r.trials.length) return [...out, `No N settled: no crash was measured (N = ${r.agents} has the details above).`, ""];
  return [
    ...out,
    `At N = ${r.agents} (${r.trials.length} crashes):`,
    "",
    "| what | median | max | target |",
    "|---|---|---|---|",
    `| crash → first report recorded by the coordinator | ${s2(r.firstReportSeconds.median)} | ${s2(r.firstReportSeconds.max)} | ≤ ${t} s: ${verdict(r.firstReportSeconds.max)} |`,
    ...[2, 3, Math.ceil(k.length / 2), k.length]
      .filter((x, i, a) => x <= k.length && a.indexOf(x) === i)
      .map((x) => `| crash → report of watcher #${x} (in arrival order) recorded | ${s2(k[x - 1])} | | |`),
    `| heartbeat bytes per agent per second, on the wire (TLS, TCP/IP, ACKs; tx of every namespace's eth0 + lo over ${r.bytes.windowSeconds.toFixed(0)} s) | ${r.bytes.wirePerAgentPerSecond.toFixed(0)} B/s | | |`,
    `| of which beat payload (${r.bytes.beatsPerAgentPerSecond.toFixed(1)} beats/s per agent) | ${r.bytes.payloadPerAgentPerSecond.toFixed(0)} B/s | | |`,
    `| live agents recorded lost (false suspicions) during the run | ${!r.falseSuspicions ? "not read" : r.falseSuspicions.length ? r.falseSuspicions.join(", ") : "none"} | | |`,
    `| start → every agent heard all its peers once (${r.agents * r.watchersPerAgent} TLS watches) | ${s2(r.warmupSeconds)} | | |`,
    "",
  ];
}
