// `npm run bench`: measures, in one run,
//  1. a bare qemu-system-x86_64 boot of the tiny VSE to its job-result marker;
//  2. `pulumi up` (Automation API, real engine) of a 1-VM cluster from start to job output;
//  3. validate + render throughput of the model (when provider/bench/model-throughput exists);
// and writes the medians, the machine and the command to bench/results/latest.{json,md}
// and the README's benchmark section.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { clusterKey } from "../drivers/network";
import { qemuArgs, QEMU_BINARY, vmPaths } from "../drivers/qemu";
import { buildImage, imageRef, imageResolver, markersFor } from "../image/busybox";
import type { EnvironmentModel, VmModel } from "../model/resolve";
import { renderVmConfig } from "../render/render";
import { engineEnv, openStack, PROJECT_ROOT } from "./engine";
import { DEFAULT_CACHE_DIR, resolveAccel } from "../program/plan";

const execa = require("execa") as typeof import("execa");

const RUNS_BARE = Number(process.env.VSE_BENCH_RUNS_BARE ?? 5);
const RUNS_UP = Number(process.env.VSE_BENCH_RUNS_UP ?? 3);

const ENV_YAML = `apiVersion: vse.dev/v1
kind: Environment
metadata: { name: bench-sum }
spec:
  job: { command: ["/bin/sh", "-c", "echo $((2+3))"], afterJob: stay-up, timeoutSeconds: 120 }
---
apiVersion: vse.dev/v1
kind: VmProfile
metadata: { name: bench-profile }
spec: { hypervisor: qemu, memory: 256MiB, vcpus: 1, machine: pc, accel: auto }
---
apiVersion: vse.dev/v1
kind: VirtualCluster
metadata: { name: bench }
spec: { environment: bench-sum, profile: bench-profile, nodes: 1, allocation: { manager: local, hosts: 1 } }
`;

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

/** One fresh stack: seconds of `pulumi up` until it returns with the job output, then destroy. */
async function pulumiUp(tmp: string): Promise<{ up: number; jobSeconds: number }> {
  const dir = fs.mkdtempSync(path.join(tmp, "up-"));
  fs.writeFileSync(path.join(dir, "bench.yaml"), ENV_YAML);
  const name = `bench-${path.basename(dir).slice(3)}`.toLowerCase().replace(/[^a-z0-9-]/g, "");
  const stack = await openStack(name, engineEnv({ backendUrl: `file://${path.join(dir, "backend")}`, passphrase: "bench" }));
  try {
    await stack.setAllConfig({ "vse:definitions": { value: dir }, "vse:stateDir": { value: path.join(dir, "state") } });
    const t0 = process.hrtime.bigint();
    const res = await stack.up();
    const up = Number(process.hrtime.bigint() - t0) / 1e9;
    const vm = (res.outputs.vms.value as Record<string, { output: string; seconds: number }>)["bench-0"];
    if (vm.output !== "5\n") throw new Error(`unexpected job output ${JSON.stringify(vm.output)}`);
    return { up, jobSeconds: vm.seconds };
  } finally {
    await stack.destroy();
    await stack.workspace.removeStack(name);
    fs.rmSync(path.join(PROJECT_ROOT, `Pulumi.${name}.yaml`), { force: true });
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
  };
}

async function main(): Promise<void> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "vse-bench-"));
  try {
    const accel = await resolveAccel("auto", DEFAULT_CACHE_DIR);
    buildImage(ENV, DEFAULT_CACHE_DIR); // warm the cache: both paths then boot the same cached image
    const bare: number[] = [];
    for (let i = 0; i < RUNS_BARE; i++) {
      bare.push(await bareBoot(tmp, accel));
      console.log(`bare QEMU boot to job result, run ${i + 1}/${RUNS_BARE}: ${bare[i].toFixed(2)} s`);
    }
    const ups: { up: number; jobSeconds: number }[] = [];
    for (let i = 0; i < RUNS_UP; i++) {
      ups.push(await pulumiUp(tmp));
      console.log(
        `pulumi up to job output, run ${i + 1}/${RUNS_UP}: ${ups[i].up.toFixed(2)} s (job result ${ups[i].jobSeconds.toFixed(2)} s after the VM was requested)`,
      );
    }
    let model: Record<string, number> | undefined;
    const modelBench = path.join(__dirname, "..", "bench", "model-throughput.js");
    if (fs.existsSync(modelBench)) {
      model = await require(modelBench).modelThroughput();
      console.log(`validate + render: ${JSON.stringify(model)}`);
    }
    const results = {
      date: new Date().toISOString(),
      command: "npm run bench",
      machine: machine(),
      accel,
      runs: { bare: RUNS_BARE, up: RUNS_UP },
      bareBootSeconds: { median: median(bare), all: bare },
      pulumiUpSeconds: { median: median(ups.map((u) => u.up)), all: ups.map((u) => u.up) },
      providerJobSeconds: { median: median(ups.map((u) => u.jobSeconds)), all: ups.map((u) => u.jobSeconds) },
      overheadSeconds: median(ups.map((u) => u.up)) - median(bare),
      model,
    };
    const md = [
      `Measured ${results.date.slice(0, 10)} with \`${results.command}\` on ${results.machine.cpu} (${results.machine.cores} cores, ${results.machine.memoryGiB} GiB), ${results.machine.qemu}, accel ${accel}:`,
      "",
      "| what | median | runs |",
      "|---|---|---|",
      `| bare \`qemu-system-x86_64\` boot of the tiny VSE to its job result | ${results.bareBootSeconds.median.toFixed(2)} s | ${RUNS_BARE} |`,
      `| \`pulumi up\` of a 1-VM cluster, start to job output (fresh stack) | ${results.pulumiUpSeconds.median.toFixed(2)} s | ${RUNS_UP} |`,
      `| of which: VM requested from its agent until its job result | ${results.providerJobSeconds.median.toFixed(2)} s | ${RUNS_UP} |`,
      `| **overhead of \`pulumi up\` over the bare boot** (target ≤ 1.0 s) | **${results.overheadSeconds.toFixed(2)} s** | |`,
      ...(model ? [`| validate + render, ${model.vms} VMs | ${Math.round(model.configsPerSecond)} configs/s | 1 |`] : []),
      "",
    ].join("\n");
    fs.mkdirSync(path.join(PROJECT_ROOT, "bench", "results"), { recursive: true });
    fs.writeFileSync(path.join(PROJECT_ROOT, "bench", "results", "latest.json"), JSON.stringify(results, null, 2) + "\n");
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
