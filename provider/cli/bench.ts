// `npm run bench [-- --only boot,warm,model,control-plane]`: measures, in one run,
//  boot:  a bare qemu-system-x86_64 boot of the tiny VSE to its job-result marker; side by side and
//         interleaved, `pulumi up` (Automation API, real engine) of the engine's floor (an empty Node
//         program, and one with one trivial dynamic resource: provider/bench/floor/) and of a 1-VM cluster
//         from start to job output, each broken down by the engine's own events (provider/bench/engine-timeline.ts),
//         and the 1-VM up once more with PULUMI_SKIP_CHECKPOINTS=true to price the checkpoint writes;
//  warm:  warm launch: `pulumi up` adding one VM of a warm environment to a running cluster (it restores
//         the snapshot the first VM left), to its job's output, beside bare cold boots in the same run;
//  model: validate + render throughput of the model (provider/bench/model-throughput.ts);
//  control-plane: 1,000 stand-in VMs with the real engine (provider/bench/control-plane.ts);
//  staging: one image to 16 bandwidth-capped namespace hosts, tree/chain/central (provider/bench/staging.ts);
//  detection: failure detection at N = 256 and 1,024 heartbeat agents over namespace hosts (provider/bench/failure-detection.ts);
//  bootstrap: k-ary tree versus flat bootstrap of N = 16 … 1,024 agents over namespace hosts (provider/bench/bootstrap.ts);
//  seed003: seed 003's figure 4, VM job launch time through Slurm, 1 … 16 jobs × 1, 2, 4 VMs per slot, busybox vs Debian (provider/bench/seed003.ts);
// and writes the medians, the machine and the command to bench/results/latest.{json,md} and the
// README's benchmark section. With --only, the other sections are kept from the previous results (each carries its date).
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { clusterKey } from "../drivers/network";
import { qemuArgs, QEMU_BINARY, vmPaths } from "../drivers/qemu";
import { buildImage, imageRef, imageResolver, markersFor } from "../image/busybox";
import type { EnvironmentModel, VmModel } from "../model/resolve";
import { renderVmConfig } from "../render/render";
import { engineEnv, openStack, PROJECT_ROOT } from "./engine";
import { breakdown, Breakdown, timed } from "../bench/engine-timeline";
import { checkpointShareMarkdown, CONTROL_PLANE_TARGETS, controlPlane, controlPlaneFloor, ControlPlaneResult, FloorResult } from "../bench/control-plane";
import { modelThroughput } from "../bench/model-throughput";
import { stagingBench, StagingBenchResult, stagingMarkdown } from "../bench/staging";
import { DetectionResult, detectionMarkdown, failureDetection } from "../bench/failure-detection";
import { bootstrapBench, bootstrapMarkdown, BootstrapResult } from "../bench/bootstrap";
import { seed003, seed003Markdown, Seed003Result } from "../bench/seed003";
import { DEFAULT_CACHE_DIR, resolveAccel } from "../program/plan";

const execa = require("execa") as typeof import("execa");

const RUNS_BARE = Number(process.env.VSE_BENCH_RUNS_BARE ?? 5);
const RUNS_UP = Number(process.env.VSE_BENCH_RUNS_UP ?? 3);

/** The benchmark's cluster: one environment adding two numbers, one profile, nodes VMs on one host; warm or not. */
const benchYaml = (o: { warm: boolean; nodes: number }) => `apiVersion: vse.dev/v1
kind: Environment
metadata: { name: ${o.warm ? "bench-warm" : "bench-sum"} }
spec:
${o.warm ? "  warm: true\n" : ""}  job: { command: ["/bin/sh", "-c", "echo $((2+3))"], afterJob: stay-up, timeoutSeconds: 120 }
---
apiVersion: vse.dev/v1
kind: VmProfile
metadata: { name: bench-profile }
spec: { hypervisor: qemu, memory: 256MiB, vcpus: 1, machine: pc, accel: auto }
---
apiVersion: vse.dev/v1
kind: VirtualCluster
metadata: { name: bench }
spec: { environment: ${o.warm ? "bench-warm" : "bench-sum"}, profile: bench-profile, nodes: ${o.nodes}, allocation: { manager: local, hosts: 1 } }
`;

const ENV_YAML = benchYaml({ warm: false, nodes: 1 });

const ENV: EnvironmentModel = {
  name: "bench-sum",
  base: "busybox",
  kernelArgs: [],
  job: { command: ["/bin/sh", "-c", "echo $((2+3))"], env: {}, afterJob: "stay-up", timeoutSeconds: 120 },
};

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Boots QEMU directly with the same config the agent would run; seconds until the job's end marker. */
async function bareBoot(tmp: string, accel: "tcg" | "kvm"): Promise<number> {
  const img = buildImage(ENV, DEFAULT_CACHE_DIR);
  const markers = markersFor(img.id);
  const vm: VmModel = {
    name: "bench-0",
    index: 0,
    host: 0,
    profile: { name: "bench-profile", hypervisor: "qemu", memoryMiB: 256, vcpus: 1, machine: "pc", accel: "auto" },
  };
  const config = renderVmConfig({ cluster: "bench", clusterKey: clusterKey("vse", "bench", "bench"), vm, image: imageRef(img.id), accel, kernelArgs: [] });
  const dir = fs.mkdtempSync(path.join(tmp, "bare-"));
  const paths = vmPaths(dir);
  const t0 = process.hrtime.bigint();
  const child = execa(QEMU_BINARY, qemuArgs(config, paths, imageResolver(DEFAULT_CACHE_DIR)), { stdin: "ignore", reject: false });
  try {
    for (;;) {
      const text = fs.existsSync(paths.console) ? fs.readFileSync(paths.console, "utf8") : "";
      if (text.includes(`${markers.end} status=`)) return Number(process.hrtime.bigint() - t0) / 1e9;
      if (child.exitCode !== null) throw new Error(`bare QEMU exited early: ${text.slice(-500)}`);
      if (Number(process.hrtime.bigint() - t0) / 1e9 > 120) throw new Error("bare QEMU: no job result in 120 s");
      await new Promise((r) => setTimeout(r, 10));
    }
  } finally {
    child.kill("SIGKILL");
    await child;
  }
}

/** One fresh stack of project workDir: `pulumi up` timed with its events, then destroyed. */
async function timedUp(
  tmp: string,
  opts: { workDir?: string; definitions?: string; extraEnv?: Record<string, string> } = {},
): Promise<{ wall: number; engine: number; breakdown: Breakdown; jobSeconds?: number }> {
  const dir = fs.mkdtempSync(path.join(tmp, "up-"));
  const name = `bench-${path.basename(dir).slice(3)}`.toLowerCase().replace(/[^a-z0-9-]/g, "");
  const workDir = opts.workDir ?? PROJECT_ROOT;
  const env = { ...engineEnv({ backendUrl: `file://${path.join(dir, "backend")}`, passphrase: "bench" }), ...opts.extraEnv };
  const stack = await openStack(name, env, workDir);
  try {
    if (opts.definitions) {
      fs.writeFileSync(path.join(dir, "bench.yaml"), opts.definitions);
      await stack.setAllConfig({ "vse:definitions": { value: dir }, "vse:stateDir": { value: path.join(dir, "state") } });
    }
    const { result, timeline } = await timed(stack, (onEvent) => stack.up({ onEvent }));
    const b = breakdown(timeline);
    let jobSeconds: number | undefined;
    if (opts.definitions) {
      const vm = (result.outputs.vms.value as Record<string, { output: string; seconds: number }>)["bench-0"];
      if (vm.output !== "5\n") throw new Error(`unexpected job output ${JSON.stringify(vm.output)}`);
      jobSeconds = vm.seconds;
    }
    return { wall: timeline.wall, engine: b.engineProcess, breakdown: b, jobSeconds };
  } finally {
    await stack.destroy();
    await stack.workspace.removeStack(name);
    fs.rmSync(path.join(workDir, `Pulumi.${name}.yaml`), { force: true });
  }
}

function machine(): Record<string, string | number> {
  const cpu = fs.readFileSync("/proc/cpuinfo", "utf8").match(/model name\s*:\s*(.*)/)?.[1] ?? "unknown";
  return {
    cpu,
    cores: os.cpus().length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    node: process.version,
    qemu: execa.sync(QEMU_BINARY, ["--version"]).stdout.split("\n")[0],
    loadAverageAtStart: os.loadavg()[0].toFixed(2),
  };
}

const SECTIONS = ["boot", "warm", "model", "control-plane", "detection", "bootstrap", "seed003", "staging"] as const;
type Section = (typeof SECTIONS)[number];

function sectionsFromArgs(argv: string[]): Section[] {
  const i = argv.indexOf("--only");
  const eq = argv.find((a) => a.startsWith("--only="));
  const value = i >= 0 ? argv[i + 1] : eq?.slice("--only=".length);
  if (value === undefined) return [...SECTIONS];
  const asked = value.split(",").map((x) => x.trim());
  const unknown = asked.filter((x) => !(SECTIONS as readonly string[]).includes(x));
  if (unknown.length || !asked.length) throw new Error(`--only: expected some of ${SECTIONS.join(", ")} (comma-separated), found ${JSON.stringify(value)}`);
  return asked as Section[];
}

const s2 = (x: number) => `${x.toFixed(2)} s`;
const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}×`;

type Series = { median: number; all: number[] };
const series = (xs: number[]): Series => ({ median: median(xs), all: xs });

/** Median of each breakdown segment over runs. */
function medianBreakdown(bs: Breakdown[]): Record<string, number> {
  const out: Record<string, number> = {};
  const keys = ["engineStart", "languageHost", "program", "pluginStart", "finish", "engineExit", "engineProcess", "automationTail"] as const;
  for (const k of keys) out[k] = median(bs.map((b) => b[k]));
  for (const t of Object.keys(bs[0].resources)) {
    out[`${t}.start`] = median(bs.map((b) => b.resources[t]?.start ?? NaN));
    out[`${t}.create`] = median(bs.map((b) => b.resources[t]?.seconds ?? NaN));
  }
  return out;
}

async function bootSection(tmp: string) {
  const accel = await resolveAccel("auto", DEFAULT_CACHE_DIR);
  buildImage(ENV, DEFAULT_CACHE_DIR); // warm the cache: both paths then boot the same cached image
  const floorDir = (k: string) => path.join(PROJECT_ROOT, "provider", "bench", "floor", k);
  const bare: number[] = [];
  const empty: Awaited<ReturnType<typeof timedUp>>[] = [];
  const trivial: typeof empty = [];
  const ours: typeof empty = [];
  const oursNoCkpt: typeof empty = [];
  // Interleaved, so that a busy moment of the machine does not fall on one kind only.
  for (let i = 0; i < Math.max(RUNS_BARE, RUNS_UP); i++) {
    if (i < RUNS_BARE) {
      bare.push(await bareBoot(tmp, accel));
      console.log(`bare QEMU boot to job result, run ${i + 1}/${RUNS_BARE}: ${s2(bare[i])}`);
    }
    if (i >= RUNS_UP) continue;
    empty.push(await timedUp(tmp, { workDir: floorDir("empty") }));
    trivial.push(await timedUp(tmp, { workDir: floorDir("trivial") }));
    ours.push(await timedUp(tmp, { definitions: ENV_YAML }));
    oursNoCkpt.push(await timedUp(tmp, { definitions: ENV_YAML, extraEnv: { PULUMI_SKIP_CHECKPOINTS: "true" } }));
    console.log(
      `run ${i + 1}/${RUNS_UP}: pulumi up of the empty floor ${s2(empty[i].wall)}, trivial floor ${s2(trivial[i].wall)}, ` +
        `1-VM ${s2(ours[i].wall)} (job result ${s2(ours[i].jobSeconds!)} after the VM was requested), 1-VM without checkpoints ${s2(oursNoCkpt[i].wall)}`,
    );
  }
  const wall = (xs: typeof empty) => series(xs.map((x) => x.wall));
  const engine = (xs: typeof empty) => series(xs.map((x) => x.engine));
  return {
    date: new Date().toISOString(),
    accel,
    runs: { bare: RUNS_BARE, up: RUNS_UP },
    bareBootSeconds: series(bare),
    floorEmptyUpSeconds: { wall: wall(empty), engineProcess: engine(empty), breakdown: medianBreakdown(empty.map((x) => x.breakdown)) },
    floorTrivialUpSeconds: { wall: wall(trivial), engineProcess: engine(trivial), breakdown: medianBreakdown(trivial.map((x) => x.breakdown)) },
    pulumiUpSeconds: { wall: wall(ours), engineProcess: engine(ours), breakdown: medianBreakdown(ours.map((x) => x.breakdown)) },
    pulumiUpSkipCheckpointsSeconds: { wall: wall(oursNoCkpt), engineProcess: engine(oursNoCkpt) },
    providerJobSeconds: series(ours.map((x) => x.jobSeconds!)),
    overheadSeconds: median(ours.map((x) => x.wall)) - median(bare),
  };
}

const WARM_YAML = (nodes: number) => benchYaml({ warm: true, nodes });

/** One `pulumi up` that adds a resource to a running stack, timed: its process, and when the added resource's outputs reached the engine. */
interface AddTimes {
  /** The `pulumi up` process, start to exit: what a user at the CLI waits for. */
  upProcess: number;
  /** `pulumi up` start → the added resource's outputs event (for a VM: its job's output is known). */
  addedDone: number;
  /** The whole Automation API call, which also runs `stack output` (twice) and `stack history` after the engine. */
  automationCall: number;
}

async function timedAdd(
  stack: Awaited<ReturnType<typeof openStack>>,
  addedName: string,
): Promise<{ times: AddTimes; outputs: Record<string, { value: unknown }> }> {
  const { result, timeline } = await timed(stack, (onEvent) => stack.up({ onEvent }));
  const b = breakdown(timeline);
  const main = timeline.commands.find((c) => c.args.startsWith("up"))!;
  const done = timeline.events.find((e) => e.kind === "resOutputsEvent" && e.urn?.endsWith(`::${addedName}`));
  if (!done) throw new Error(`no outputs event for the added resource ${addedName}`);
  return { times: { upProcess: b.engineProcess, addedDone: done.t - main.start, automationCall: timeline.wall }, outputs: result.outputs };
}

/**
 * Warm launch, side by side with bare cold boots and the engine's floor: one stack whose first VM
 * boots cold (and leaves the snapshot), then, run after run, `pulumi up` adding a second VM (it
 * restores) and `pulumi up` removing it again; interleaved with the same two ups on a stack of
 * trivial dynamic resources (as many as the cluster's stack has: environment, profile, cluster, VM).
 */
async function warmSection(tmp: string) {
  const accel = await resolveAccel("auto", DEFAULT_CACHE_DIR);
  const dir = fs.mkdtempSync(path.join(tmp, "warm-"));
  const name = `bench-warm-${path.basename(dir).slice(5)}`.toLowerCase().replace(/[^a-z0-9-]/g, "");
  const stack = await openStack(name, engineEnv({ backendUrl: `file://${path.join(dir, "backend")}`, passphrase: "bench" }));
  const floorDir = path.join(PROJECT_ROOT, "provider", "bench", "floor", "trivial");
  const floorName = `${name}-floor`;
  const floor = await openStack(floorName, engineEnv({ backendUrl: `file://${path.join(dir, "floor-backend")}`, passphrase: "bench" }), floorDir);
  const bare: number[] = [];
  const adds: AddTimes[] = [];
  const floorAdds: AddTimes[] = [];
  const jobWarm: number[] = [];
  let jobCold = NaN;
  try {
    await stack.setAllConfig({
      "vse:definitions": { value: dir },
      "vse:stateDir": { value: path.join(dir, "state") },
      "vse:cacheDir": { value: path.join(dir, "cache") },
    });
    fs.writeFileSync(path.join(dir, "bench.yaml"), WARM_YAML(1));
    const first = await stack.up();
    const vm0 = (first.outputs.vms.value as Record<string, { seconds: number; launch: string }>)["bench-0"];
    if (vm0.launch !== "cold") throw new Error(`the first warm VM came up ${vm0.launch}, expected cold`);
    jobCold = vm0.seconds;
    await floor.setConfig("vse-bench-floor-trivial:count", { value: "4" });
    await floor.up();
    for (let i = 0; i < Math.max(RUNS_BARE, RUNS_UP); i++) {
      if (i < RUNS_BARE) bare.push(await bareBoot(tmp, accel));
      if (i >= RUNS_UP) continue;
      fs.writeFileSync(path.join(dir, "bench.yaml"), WARM_YAML(2));
      const add = await timedAdd(stack, "bench-1");
      const vm1 = (add.outputs.vms.value as Record<string, { seconds: number; launch: string; output: string }>)["bench-1"];
      if (vm1.launch !== "warm" || vm1.output !== "5\n") throw new Error(`the added VM came up ${vm1.launch} with ${JSON.stringify(vm1.output)}`);
      adds.push(add.times);
      jobWarm.push(vm1.seconds);
      fs.writeFileSync(path.join(dir, "bench.yaml"), WARM_YAML(1));
      await stack.up();
      await floor.setConfig("vse-bench-floor-trivial:count", { value: "5" });
      floorAdds.push((await timedAdd(floor, "trivial-4")).times);
      await floor.setConfig("vse-bench-floor-trivial:count", { value: "4" });
      await floor.up();
      console.log(
        `warm run ${i + 1}/${RUNS_UP}: pulumi up adding a warm VM ${s2(add.times.upProcess)} (its outputs at ${s2(add.times.addedDone)}; ` +
          `Automation API call ${s2(add.times.automationCall)}), VM requested → job output ${s2(vm1.seconds)}; ` +
          `floor adding a trivial resource ${s2(floorAdds[i].upProcess)}`,
      );
    }
  } finally {
    await stack.destroy();
    await stack.workspace.removeStack(name);
    fs.rmSync(path.join(PROJECT_ROOT, `Pulumi.${name}.yaml`), { force: true });
    await floor.destroy().catch(() => undefined);
    await floor.workspace.removeStack(floorName).catch(() => undefined);
    fs.rmSync(path.join(floorDir, `Pulumi.${floorName}.yaml`), { force: true });
  }
  const pick = (xs: AddTimes[], k: keyof AddTimes) => series(xs.map((x) => x[k]));
  return {
    date: new Date().toISOString(),
    accel,
    runs: { bare: RUNS_BARE, up: RUNS_UP },
    bareBootSeconds: series(bare),
    /** The `pulumi up` process adding the warm VM, start to exit (the target's measure). */
    upAddingWarmVmSeconds: pick(adds, "upProcess"),
    upAddingWarmVmOutputsAt: pick(adds, "addedDone"),
    upAddingWarmVmAutomationCall: pick(adds, "automationCall"),
    floorAddingTrivialSeconds: pick(floorAdds, "upProcess"),
    floorAddingTrivialOutputsAt: pick(floorAdds, "addedDone"),
    warmJobSeconds: series(jobWarm),
    firstColdJobSeconds: jobCold,
  };
}
type WarmResult = Awaited<ReturnType<typeof warmSection>>;

function warmMarkdown(w: WarmResult): string[] {
  const bare = w.bareBootSeconds.median;
  const up = w.upAddingWarmVmSeconds.median;
  const job = w.warmJobSeconds.median;
  const fl = w.floorAddingTrivialSeconds?.median;
  const verdict = (ok: boolean, over: string) => (ok ? "met" : `**not met**: ${over}`);
  const row = (what: string, x: number | undefined, runs: number, target = "") =>
    x === undefined ? [] : [`| ${what} | ${s2(x)} | ${runs} | ${ratio(x, bare)} | ${target} |`];
  const ours = fl === undefined ? undefined : up - fl;
  return [
    `**Warm launch** (${w.date.slice(0, 10)}, accel ${w.accel}; medians; bare boots, the ups and the engine's floor interleaved in the same run):`,
    "",
    "| what | median | runs | ratio to the bare boot | target |",
    "|---|---|---|---|---|",
    `| bare \`qemu-system-x86_64\` cold boot of the tiny VSE to its job result | ${s2(bare)} | ${w.runs.bare} | 1.00× | |`,
    ...row(
      "`pulumi up` adding one VM of a warm environment to a running cluster: the `pulumi up` process, start to exit (job output printed)",
      up,
      w.runs.up,
      `≤ 0.5× bare: ${verdict(up <= 0.5 * bare, `${ratio(up, bare)}, ${s2(up - 0.5 * bare)} over`)}`,
    ),
    ...row("of it: `pulumi up` start → the added VM's outputs (its job's output) reach the engine", w.upAddingWarmVmOutputsAt?.median, w.runs.up),
    ...row(
      "of it: VM requested from its agent → job output (restored from the snapshot)",
      job,
      w.runs.up,
      `≤ 0.6 s: ${verdict(job <= 0.6, `${s2(job - 0.6)} over`)}`,
    ),
    ...row("engine floor: the `pulumi up` process adding one trivial dynamic resource to a stack of 4, start to exit", fl, w.runs.up),
    ...row(
      "the same VM's up as an Automation API call (it adds `stack output` twice and `stack history` after the engine)",
      w.upAddingWarmVmAutomationCall?.median,
      w.runs.up,
    ),
    `| the first VM of the environment (no snapshot yet: boots, then saves one) | ${s2(w.firstColdJobSeconds)} | 1 | ${ratio(w.firstColdJobSeconds, bare)} | |`,
    "",
    ...(ours === undefined
      ? []
      : [
          ours >= 0
            ? `Of the warm up's ${s2(up)}, the engine's floor for adding one resource takes ${s2(fl!)} (${ratio(fl!, bare)} of the bare boot) and the rest, ${s2(ours)}, is ours: ` +
              `the program (definitions, plan, render), the VM's create (${s2(job)} from the request to the job's output) and the diffs of the resources already there.`
            : `The warm up (${s2(up)}) takes less than the engine's floor for adding one trivial resource (${s2(fl!)}, ${ratio(fl!, bare)} of the bare boot), VM create included ` +
              `(${s2(job)} from the request to the job's output): the floor's program loads the whole SDK and serializes its provider's closure for each resource; ` +
              `ours loads only the SDK modules it uses and names its provider by module (provider/resources/provider-module.ts).`,
          "",
        ]),
  ];
}

type Results = {
  date: string;
  command: string;
  machine: Record<string, string | number>;
  boot?: BootResult;
  warm?: WarmResult;
  model?: Awaited<ReturnType<typeof modelThroughput>> & { date: string };
  controlPlane?: ControlPlaneResult & { date: string; floor: FloorResult };
  detection?: DetectionResult & { date: string };
  bootstrap?: BootstrapResult & { date: string };
  seed003?: Seed003Result;
  staging?: StagingBenchResult & { date: string };
};
type BootResult = Awaited<ReturnType<typeof bootSection>>;

function bootMarkdown(b: BootResult): string[] {
  const bare = b.bareBootSeconds.median;
  const ours = b.pulumiUpSeconds;
  const triv = b.floorTrivialUpSeconds;
  const empty = b.floorEmptyUpSeconds;
  const bd = ours.breakdown;
  const tb = triv.breakdown;
  const env = (k: string) => bd[`Environment.${k}`];
  const seg = (label: string, a: number | undefined, f: number | undefined) =>
    `| ${label} | ${a === undefined || isNaN(a) ? "–" : s2(a)} | ${f === undefined || isNaN(f) ? "–" : s2(f)} |`;
  return [
    `**One VM** (${b.date.slice(0, 10)}, accel ${b.accel}; medians; every row measured in the same run, interleaved):`,
    "",
    "| what | median | runs | ratio to the bare boot | ratio to the trivial floor |",
    "|---|---|---|---|---|",
    `| bare \`qemu-system-x86_64\` boot of the tiny VSE to its job result | ${s2(bare)} | ${b.runs.bare} | 1.00× | |`,
    `| engine floor: \`pulumi up\` of an empty Node program | ${s2(empty.wall.median)} | ${b.runs.up} | ${ratio(empty.wall.median, bare)} | ${ratio(empty.wall.median, triv.wall.median)} |`,
    `| engine floor: \`pulumi up\` of one trivial dynamic resource | ${s2(triv.wall.median)} | ${b.runs.up} | ${ratio(triv.wall.median, bare)} | 1.00× |`,
    `| \`pulumi up\` of a 1-VM cluster, start to job output (fresh stack) | ${s2(ours.wall.median)} | ${b.runs.up} | ${ratio(ours.wall.median, bare)} | ${ratio(ours.wall.median, triv.wall.median)} |`,
    `| the same with \`PULUMI_SKIP_CHECKPOINTS=true\` | ${s2(b.pulumiUpSkipCheckpointsSeconds.wall.median)} | ${b.runs.up} | ${ratio(b.pulumiUpSkipCheckpointsSeconds.wall.median, bare)} | |`,
    `| of the 1-VM up: VM requested from its agent until its job result | ${s2(b.providerJobSeconds.median)} | ${b.runs.up} | ${ratio(b.providerJobSeconds.median, bare)} | |`,
    `| **overhead of \`pulumi up\` over the bare boot** (target ≤ the trivial floor + 0.5 s = ${s2(triv.wall.median + 0.5)}: ${b.overheadSeconds <= triv.wall.median + 0.5 ? "met" : `**not met** by ${s2(b.overheadSeconds - triv.wall.median - 0.5)}`}) | **${s2(b.overheadSeconds)}** | | | |`,
    "",
    "Where the 1-VM `pulumi up` spends its time (engine events stamped on arrival; medians), beside the trivial floor:",
    "",
    "| segment | 1-VM up | trivial floor |",
    "|---|---|---|",
    seg("engine start (CLI, project, backend, config → prelude event)", bd.engineStart, tb.engineStart),
    seg("language host + Node + @pulumi/pulumi (→ Stack registered)", bd.languageHost, tb.languageHost),
    seg("program (definitions, plan, render → first resource sent)", bd.program, tb.program),
    seg("dynamic-provider plugin start (→ default provider created)", bd.pluginStart, tb.pluginStart),
    seg("Environment create (image found in the cache)", env("create"), undefined),
    seg("VmProfile create (hypervisor probe)", bd["VmProfile.create"], undefined),
    seg("VirtualCluster create (incl. agent start)", bd["VirtualCluster.create"], undefined),
    seg("VirtualMachine create (incl. boot to job output)", bd["VirtualMachine.create"], undefined),
    seg("trivial resource create", undefined, tb["Trivial.create"]),
    seg("VirtualMachine create began at (after its dependencies)", bd["VirtualMachine.start"], undefined),
    seg("last resource done → summary event (stack outputs)", bd.finish, tb.finish),
    seg("summary → engine exit (final checkpoint, plugins down, CLI exit)", bd.engineExit, tb.engineExit),
    seg("the `pulumi up` process, start to exit", bd.engineProcess, tb.engineProcess),
    seg("Automation API after the engine exits (`stack output` ×2, `stack history`)", bd.automationTail, tb.automationTail),
    seg(
      "checkpoint writes (engine process of up minus up with PULUMI_SKIP_CHECKPOINTS=true; a difference of medians, within noise when near 0)",
      ours.engineProcess.median - b.pulumiUpSkipCheckpointsSeconds.engineProcess.median,
      undefined,
    ),
    "",
  ];
}

function controlPlaneMarkdown(c: ControlPlaneResult & { date: string; floor: FloorResult }): string[] {
  const t = CONTROL_PLANE_TARGETS;
  const verdict = (v: number, target: number, unit: string, fmt: (x: number) => string) =>
    v <= target ? `met (${fmt(target - v)} ${unit} to spare)` : `**not met**: ${fmt(v - target)} ${unit} over (${(v / target).toFixed(1)}×)`;
  const f1 = (x: number) => x.toFixed(1);
  const bu = c.up.breakdown;
  const bc = c.changeOne.breakdown;
  return [
    `**Control plane, ${c.vms} VMs** (${c.date.slice(0, 10)}; ${c.clusters} clusters of ${c.vms / c.clusters}, ${c.agents} agents; guests are STAND-INS: ${c.guest}; one run each):`,
    "",
    `| what | ${c.vms} stand-in VMs | engine floor: ${c.floor.resources} trivial dynamic resources | ratio | target | verdict |`,
    "|---|---|---|---|---|---|",
    `| \`pulumi up\`, fresh stack | ${s2(c.up.seconds)} | ${s2(c.floor.upSeconds)} | ${ratio(c.up.seconds, c.floor.upSeconds)} | | |`,
    `| \`pulumi up\`, fresh stack, with \`PULUMI_SKIP_CHECKPOINTS=true\` (only the final checkpoint written) | ${s2(c.upSkipCheckpoints.seconds)} | ${s2(c.floor.upSkipCheckpointsSeconds)} | ${ratio(c.upSkipCheckpoints.seconds, c.floor.upSkipCheckpointsSeconds)} | | |`,
    `| no-op \`pulumi preview\` | ${s2(c.preview.seconds)} | ${s2(c.floor.previewSeconds)} | ${ratio(c.preview.seconds, c.floor.previewSeconds)} | ≤ ${t.previewSeconds} s | ${verdict(c.preview.seconds, t.previewSeconds, "s", f1)} |`,
    `| \`pulumi up\` that changes one VM | ${s2(c.changeOne.seconds)} | ${s2(c.floor.changeOneSeconds)} | ${ratio(c.changeOne.seconds, c.floor.changeOneSeconds)} | ≤ ${t.changeOneSeconds} s | ${verdict(c.changeOne.seconds, t.changeOneSeconds, "s", f1)} |`,
    `| checkpoint bytes per VM (${c.checkpoint.bytes} B / ${c.vms}) | ${Math.round(c.checkpoint.bytesPerVm)} B | ${Math.round(c.floor.checkpoint.bytesPerResource)} B | ${ratio(c.checkpoint.bytesPerVm, c.floor.checkpoint.bytesPerResource)} | ≤ ${t.checkpointBytesPerVm} B | ${verdict(c.checkpoint.bytesPerVm, t.checkpointBytesPerVm, "B", (x) => String(Math.round(x)))} |`,
    `| \`pulumi destroy\` of ${c.vms} VMs, with \`PULUMI_SKIP_CHECKPOINTS=true\` (cleanup) | ${s2(c.destroySeconds)} | | | | |`,
    "",
    ...checkpointShareMarkdown(c.checkpoint.perVm, c.floor.checkpoint.bytesPerResource),
    "Where the time goes (engine events; the floor's figures in brackets):",
    "",
    "| segment | up (fresh) | preview | change one |",
    "|---|---|---|---|",
    ...(() => {
      const fl = c.floor;
      const row = (label: string, f: (b: Breakdown) => number) =>
        `| ${label} | ${s2(f(bu))} (${s2(f(fl.upBreakdown))}) | ${s2(f(c.preview.breakdown))} (${s2(f(fl.previewBreakdown))}) | ${s2(f(bc))} (${s2(f(fl.changeOneBreakdown))}) |`;
      return [
        row("engine start", (b) => b.engineStart),
        row("language host + Node", (b) => b.languageHost),
        row("program (ours: 1,000 VMs planned and rendered, resources declared)", (b) => b.program),
        row("plugin start", (b) => b.pluginStart),
        row("first resource step began → last resource done", (b) => resourceSpan(b)),
        row("last resource → summary", (b) => b.finish),
        row("summary → engine exit", (b) => b.engineExit),
        row("the engine process", (b) => b.engineProcess),
        row("Automation API after the engine", (b) => b.automationTail),
        `| of which VirtualCluster create (${c.agents / c.clusters} agents each), longest | ${s2(bu.resources.VirtualCluster?.seconds ?? NaN)} | | |`,
      ];
    })(),
    "",
    ...cpuMarkdown(c),
  ];
}

/** CPU seconds per process during the preview and the change, beside the floor's: on 2 cores, what the wall time is made of. */
function cpuMarkdown(c: ControlPlaneResult & { floor: FloorResult }): string[] {
  const p = c.preview.cpu;
  const ch = c.changeOne.cpu;
  const fp = c.floor.previewCpu;
  const fc = c.floor.changeOneCpu;
  if (!p || !ch || !fp || !fc) return [];
  const roles = [
    ["engine", "the engine (`pulumi` CLI, Go)"],
    ["program", "the language host running the program"],
    ["plugin", "the dynamic-provider plugin (Check, Diff, Update)"],
    ["agents", "the node agents"],
  ] as const;
  const sum = (x: Record<string, number>) => Object.values(x).reduce((a, b) => a + b, 0);
  return [
    "CPU seconds per process (sampled from /proc every 100 ms; the floor's figures in brackets):",
    "",
    "| process | preview | change one |",
    "|---|---|---|",
    ...roles.map(([k, label]) => `| ${label} | ${s2(p[k])} (${s2(fp[k])}) | ${s2(ch[k])} (${s2(fc[k])}) |`),
    `| all of them | ${s2(sum(p))} (${s2(sum(fp))}) | ${s2(sum(ch))} (${s2(sum(fc))}) |`,
    "",
  ];
}

/** From the first resource step (after the stack and its provider) to the last resource's outputs. */
function resourceSpan(b: Breakdown): number {
  const starts = Object.values(b.resources).map((r) => r.start);
  return starts.length ? b.lastResourceAt - Math.min(...starts) : NaN;
}

async function main(): Promise<void> {
  const sections = sectionsFromArgs(process.argv.slice(2));
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "vse-bench-"));
  const file = path.join(PROJECT_ROOT, "bench", "results", "latest.json");
  let previous: Partial<Results> = {};
  try {
    const p = JSON.parse(fs.readFileSync(file, "utf8"));
    // Results of the layout before sections: nothing of it is kept.
    if (p.boot || p.controlPlane || p.model?.date || p.detection || p.bootstrap || p.staging) previous = p;
  } catch {
    // no previous results
  }
  try {
    const only = sections.length === SECTIONS.length ? "" : ` --only ${sections.join(",")}`;
    // `npm run bench` runs scripts/setup.sh first, then this file; say which way it was started.
    const command = process.env.npm_lifecycle_event === "bench" ? `npm run bench${only ? ` --${only}` : ""}` : `node dist/provider/cli/bench.js${only}`;
    const results: Results = {
      // Sections this file does not know (other parts' results) are kept as they were.
      ...previous,
      date: new Date().toISOString(),
      command,
      machine: machine(),
      boot: previous.boot,
      warm: previous.warm,
      model: previous.model,
      controlPlane: previous.controlPlane,
      detection: previous.detection,
      bootstrap: previous.bootstrap,
      seed003: previous.seed003,
      staging: previous.staging,
    };
    if (sections.includes("boot")) results.boot = await bootSection(tmp);
    if (sections.includes("warm")) results.warm = await warmSection(tmp);
    if (sections.includes("model")) {
      results.model = { date: new Date().toISOString(), ...(await modelThroughput()) };
      console.log(`validate + render: ${JSON.stringify(results.model)}`);
    }
    if (sections.includes("control-plane")) {
      const date = new Date().toISOString();
      const cp = await controlPlane(tmp);
      results.controlPlane = { date, ...cp, floor: await controlPlaneFloor(tmp) };
    }
    if (sections.includes("detection")) results.detection = { date: new Date().toISOString(), ...(await failureDetection(tmp)) };
    if (sections.includes("bootstrap")) results.bootstrap = { date: new Date().toISOString(), ...(await bootstrapBench(tmp)) };
    if (sections.includes("seed003")) {
      // The grid can be reduced for a quick look: VSE_BENCH_SEED003_{JOBS,VMS,IMAGES} (comma-separated), VSE_BENCH_SEED003_RUNS, _BUDGET_MIN.
      const list = (v: string | undefined) => v?.split(",").map((x) => x.trim());
      results.seed003 = await seed003(tmp, {
        jobs: list(process.env.VSE_BENCH_SEED003_JOBS)?.map(Number),
        vmsPerSlot: list(process.env.VSE_BENCH_SEED003_VMS)?.map(Number),
        images: list(process.env.VSE_BENCH_SEED003_IMAGES) as ("stripped" | "full")[] | undefined,
        runs: process.env.VSE_BENCH_SEED003_RUNS ? Number(process.env.VSE_BENCH_SEED003_RUNS) : undefined,
        budgetMinutes: process.env.VSE_BENCH_SEED003_BUDGET_MIN ? Number(process.env.VSE_BENCH_SEED003_BUDGET_MIN) : undefined,
        png: path.join(PROJECT_ROOT, "bench", "results", "seed003-launch.png"),
      });
    }
    if (sections.includes("staging")) results.staging = { date: new Date().toISOString(), ...(await stagingBench(tmp)) };
    // Other bench runs may have written meanwhile: their sections are taken as the file has them now, not as it was when this run began.
    try {
      const now = JSON.parse(fs.readFileSync(file, "utf8")) as Record<string, unknown>;
      const ran = new Set<string>(sections.map((x) => x.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase())));
      for (const [k, v] of Object.entries(now)) if (!["date", "command", "machine"].includes(k) && !ran.has(k)) (results as Record<string, unknown>)[k] = v;
    } catch {
      // no results file yet
    }
    const m = results.machine;
    const md = [
      `Measured with \`${command}\` on ${m.cpu} (${m.cores} cores, ${m.memoryGiB} GiB, load average ${m.loadAverageAtStart} at the start), ${m.qemu}; sections not run by this command keep the date they were measured.`,
      "",
      ...(results.boot ? bootMarkdown(results.boot) : []),
      ...(results.warm ? warmMarkdown(results.warm) : []),
      ...(results.controlPlane ? controlPlaneMarkdown(results.controlPlane) : []),
      ...(results.detection ? detectionMarkdown(results.detection) : []),
      ...(results.bootstrap ? bootstrapMarkdown(results.bootstrap) : []),
      ...(results.staging ? stagingMarkdown(results.staging) : []),
      ...(results.seed003 ? seed003Markdown(results.seed003, "bench/results/seed003-launch.png") : []),
      ...(results.model
        ? [
            `**Model**: validate + render of ${results.model.vms} VMs: ${Math.round(results.model.configsPerSecond)} configs/s (${String(results.model.date ?? results.date).slice(0, 10)}).`,
            "",
          ]
        : []),
    ].join("\n");
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, JSON.stringify(results, null, 2) + "\n");
    fs.writeFileSync(path.join(PROJECT_ROOT, "bench", "results", "latest.md"), md);
    const readme = path.join(PROJECT_ROOT, "README.md");
    if (fs.existsSync(readme)) {
      const text = fs.readFileSync(readme, "utf8");
      const updated = text.replace(/<!-- bench:start -->[\s\S]*<!-- bench:end -->/, `<!-- bench:start -->\n${md}<!-- bench:end -->`);
      fs.writeFileSync(readme, updated);
    }
    console.log(`\n${md}\nwritten to bench/results/latest.json and latest.md`);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err instanceof Error ? (err.stack ?? err.message) : err);
  process.exit(1);
});
