// VM jobs through the real Slurm of scripts/slurm-up.sh (munged, slurmctld, a
// slurmd in each namespace host vse-tslm-h<i>), started here if it is not up:
// a job array of 2 slots × 2 VMs gives 4 results; scancel of a running job
// powers its guests down through the driver and leaves nothing; a guest job
// that exits 3 is reported as 3. Every case checks that no QEMU, no state and
// no Slurm job is left. Needs root and the compiled runner (npx tsc -p tsconfig.json).
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { netnsLeftovers } from "../../provider/allocation/netns";
import { checkJobSpec, VmJobSpec } from "../../provider/job/vm-job";
import { batchScript, JOB_RUNNER, prepareVmJob, sbatchArgs, submitVmJob, VmJobResult } from "../../provider/job/submit";
import { main } from "../../provider/cli/vse";
import { ensureSlurm, jobsNamed, SLURM_TAG } from "../support/slurm";
import { createProjectStack, processesUnder, processEnded } from "../support/stack";

jest.setTimeout(300 * 1000);

let dir: string;
const execa = require("execa") as typeof import("execa");

/** A definitions directory: one busybox environment running command, a small profile, a slurm cluster. */
function definitions(name: string, command: string, afterJob = "power-off"): string {
  const d = path.join(dir, `defs-${name}`);
  fs.mkdirSync(d, { recursive: true });
  fs.writeFileSync(
    path.join(d, "job.yaml"),
    `apiVersion: vse.dev/v1
kind: Environment
metadata: { name: ${name}-env }
spec:
  job: { command: ["/bin/sh", "-c", ${JSON.stringify(command)}], afterJob: ${afterJob}, timeoutSeconds: 240 }
---
apiVersion: vse.dev/v1
kind: VmProfile
metadata: { name: tiny }
spec: { hypervisor: qemu, memory: 128MiB, vcpus: 1, machine: pc, accel: tcg }
---
apiVersion: vse.dev/v1
kind: VirtualCluster
metadata: { name: ${name} }
spec: { environment: ${name}-env, profile: tiny, nodes: 1, allocation: { manager: slurm, hosts: 1, slurm: { partition: debug, timeLimit: 15 } } }
`,
  );
  return d;
}

const stateRoot = () => path.join(dir, "state");

/** Nothing of the job stays: no process under the state root (QEMU, runner), no job directory, no Slurm job. */
async function expectNothingLeft(r: VmJobResult, cluster: string): Promise<void> {
  expect(processesUnder(stateRoot())).toEqual([]);
  expect(fs.readdirSync(path.join(stateRoot(), "jobs"))).toEqual([]);
  expect(await jobsNamed(`vse-job-${cluster}`)).toEqual([]);
  const q = await execa("squeue", ["-h", "-j", r.jobId], { reject: false });
  expect(q.stdout.trim()).toBe("");
}

beforeAll(async () => {
  await ensureSlurm();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-vmjob-"));
});

afterAll(async () => {
  for (const c of ["arr", "cancel", "fail", "pulumi"]) for (const [id] of await jobsNamed(`vse-job-${c}`)) await execa("scancel", [id], { reject: false });
  fs.rmSync(dir, { recursive: true, force: true });
  // The Slurm nodes' namespace hosts stay for the next test file; only they carry the tag.
  const left = await netnsLeftovers(SLURM_TAG);
  expect(left.netns.sort()).toEqual(["vse-tslm-h0", "vse-tslm-h1"]);
});

test("the job file and sbatch's command line take validated values only", () => {
  const good: VmJobSpec = {
    version: 1,
    cluster: "c",
    imageId: "a".repeat(64),
    kernelArgs: [],
    profile: { name: "p", hypervisor: "qemu", memoryMiB: 128, vcpus: 1, machine: "pc", accel: "tcg" },
    afterJob: "power-off",
    vmsPerSlot: 2,
    timeoutSeconds: 60,
    stopGraceSeconds: 5,
    imageStore: "/var/cache/images",
    stateRoot: "/tmp/slots",
    timing: "unix:/tmp/t.sock",
  };
  expect(checkJobSpec(JSON.parse(JSON.stringify(good)), "job.json")).toEqual(good);
  expect(() => checkJobSpec({ ...good, imageStore: "../images" }, "job.json")).toThrow("job.json: imageStore: expected a normalised absolute path");
  expect(() => checkJobSpec({ ...good, kernelArgs: ["a;reboot"] }, "job.json")).toThrow("job.json: kernelArgs");
  expect(() => checkJobSpec({ ...good, vmsPerSlot: 17 }, "job.json")).toThrow("job.json: vmsPerSlot: expected a whole number from 1 to 16");
  expect(() => checkJobSpec({ ...good, timing: "tcp:example.org:80" }, "job.json")).toThrow("job.json: timing: expected unix:");
  const base = { cluster: "c", jobs: 3, vmsPerSlot: 2, jobDir: "/j", memoryMiB: 128, jobFile: "/j/job.json", script: "/j/batch.sh" };
  const args = sbatchArgs({ ...base, partition: "debug" });
  expect(args).toEqual(expect.arrayContaining(["--array=0-2", "--ntasks=1", "--mem=384M", "--partition=debug", "--output=/j/task-%a.out"]));
  expect(args.slice(-5)).toEqual(["/j/batch.sh", process.execPath, JOB_RUNNER, "--job", "/j/job.json"]);
  expect(() => sbatchArgs({ ...base, partition: "debug --uid=0" })).toThrow("--partition: expected a Slurm partition name");
  expect(() => sbatchArgs({ ...base, jobs: 0 })).toThrow("--jobs: expected a whole number from 1 to 1000");
  expect(batchScript({ jobs: 3, vmsPerSlot: 2 })).toContain('exec srun --ntasks=1 --kill-on-bad-exit=1 "$@"');
});

test("a job array of 2 slots × 2 VMs through sbatch: 4 outputs and exit codes, timings from the logger, nothing left", async () => {
  const prep = await prepareVmJob([definitions("arr", "echo sum=$((2+3))")], { cluster: "arr", jobs: 2, vmsPerSlot: 2, stateRoot: stateRoot() });
  const job = await submitVmJob(prep);
  expect(job.jobId).toMatch(/^[0-9]+$/);
  const r = await job.done;
  expect(r.tasks.map((t) => [t.task, t.state, t.cancelled])).toEqual([
    [0, "COMPLETED", false],
    [1, "COMPLETED", false],
  ]);
  for (const t of r.tasks) {
    expect(["vse-tslm-h0", "vse-tslm-h1"]).toContain(t.node);
    expect(t.vms.map((v) => [v.name, v.state, v.exitCode, v.output])).toEqual([
      ["vm-0", "done", 0, "sum=5\n"],
      ["vm-1", "done", 0, "sum=5\n"],
    ]);
  }
  // Every stage of every guest reached the logger, in order: submitted → step → VM process → guest job → result.
  const at = (event: string, task?: number, vm?: number) => r.timing.find((e) => e.event === event && e.task === task && e.vm === vm)?.at;
  for (const task of [0, 1]) {
    for (const vm of [0, 1]) {
      const seq = [at("submitted"), at("step-start", task), at("vm-started", task, vm), at("guest-begin", task, vm), at("result", task, vm)];
      expect(seq.every((x) => typeof x === "number")).toBe(true);
      expect([...(seq as number[])].sort((a, b) => a - b)).toEqual(seq);
    }
  }
  await expectNothingLeft(r, "arr");
});

test("scancel of a running job powers its guests down cleanly through the runner and leaves nothing", async () => {
  const prep = await prepareVmJob([definitions("cancel", "echo going to sleep; sleep 600")], {
    cluster: "cancel",
    jobs: 1,
    vmsPerSlot: 2,
    stateRoot: stateRoot(),
  });
  const job = await submitVmJob(prep);
  // Both guests are inside their job (the begin marker reached the logger) before the scheduler cancels it.
  await job.timing.waitFor((e) => e.event === "guest-begin" && e.vm === 0, 180000);
  await job.timing.waitFor((e) => e.event === "guest-begin" && e.vm === 1, 180000);
  const qemus = processesUnder(prep.jobDir).filter((p) => p.argv[0].includes("qemu-system"));
  expect(qemus).toHaveLength(2);
  await execa("scancel", [job.jobId]);
  const r = await job.done;
  const t = r.tasks[0];
  expect(t.state).toBe("CANCELLED");
  expect(t.cancelled).toBe(true);
  expect(t.vms.map((v) => [v.name, v.state])).toEqual([
    ["vm-0", "cancelled"],
    ["vm-1", "cancelled"],
  ]);
  expect(t.log).toContain("SIGTERM: the job is being cancelled");
  expect(t.log).toMatch(/clean stop: 2 guest\(s\) powered down through the driver and removed/);
  expect(r.timing.some((e) => e.event === "cancelled" && e.task === 0)).toBe(true);
  for (const q of qemus) expect(processEnded(q.pid)).toBe(true);
  await expectNothingLeft(r, "cancel");
});

test("a guest job that exits 3 is reported with exit status 3, through the vse CLI", async () => {
  const out: string[] = [];
  const err: string[] = [];
  const code = await main(
    [
      "job",
      "submit",
      definitions("fail", "echo about to fail; exit 3"),
      "--cluster",
      "fail",
      "--jobs",
      "1",
      "--vms-per-slot",
      "1",
      "--state-dir",
      stateRoot(),
      "--json",
    ],
    { stdout: (t) => out.push(t), stderr: (t) => err.push(t), cwd: dir },
  );
  expect(code).toBe(1);
  const r = JSON.parse(out.join("")) as VmJobResult;
  expect(r.tasks).toHaveLength(1);
  // The runner exits with the guest's status, so Slurm marks the task failed.
  expect(r.tasks[0].state).toBe("FAILED");
  expect(r.tasks[0].vms).toEqual([{ name: "vm-0", state: "done", exitCode: 3, output: "about to fail\n" }]);
  await expectNothingLeft(r, "fail");
});

test("a VmJob resource: `pulumi up` runs the job through Slurm and its guests' outputs and exit codes are stack outputs; destroy leaves nothing", async () => {
  const ps = await createProjectStack(path.join(__dirname, "vmjob-project"));
  try {
    await ps.stack.setAllConfig({
      "vse:definitions": { value: definitions("pulumi", "echo sum=$((40+2))") },
      "vse:cluster": { value: "pulumi" },
      "vse:jobs": { value: "1" },
      "vse:vmsPerSlot": { value: "2" },
    });
    const up = await ps.stack.up();
    expect(up.summary.result).toBe("succeeded");
    expect(up.outputs.exitCodes.value).toEqual([0, 0]);
    expect(up.outputs.outputs.value).toEqual(["sum=42\n", "sum=42\n"]);
    const jobId = up.outputs.slurmJobId.value as string;
    expect(jobId).toMatch(/^[0-9]+$/);
    // Nothing runs after the job: no QEMU or runner under the stack's state, no job directory, Slurm lists nothing.
    expect(processesUnder(ps.stateRoot)).toEqual([]);
    expect(fs.readdirSync(path.join(ps.stateRoot, "jobs"))).toEqual([]);
    expect(await jobsNamed("vse-job-pulumi")).toEqual([]);
    // A second up changes nothing: the job is not run again.
    const again = await ps.stack.up();
    expect(again.summary.resourceChanges).toEqual({ same: 2 });
    expect(again.outputs.slurmJobId.value).toBe(jobId);
  } finally {
    await ps.cleanup();
  }
  expect(await jobsNamed("vse-job-pulumi")).toEqual([]);
});
