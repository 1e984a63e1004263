// The `gridengine` allocation manager (issue 10, seed 003's job arrays):
// the generated job scripts and commands against goldens (UPDATE_GOLDEN=1
// rewrites them, never under CI), the settings' checks, and a cluster
// allocated as a real job array on the real Grid Engine daemons of this machine
// (tests/support/gridengine.ts starts them idempotently): one agent per task,
// a QEMU job through one of them, and a release that leaves no job, agent,
// QEMU or spool behind. Needs root and the compiled agent (npx tsc -p tsconfig.json).
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { AgentClient } from "../../provider/agent/client";
import { newClusterToken } from "../../provider/agent/protocol";
import { allocationEnded, AllocationRequest } from "../../provider/allocation/allocator";
import {
  BatchJob,
  checkBatchSettings,
  findCommand,
  gridEngineAllocator,
  gridEngineCommands,
  gridEngineScript,
  gridEngineFlavour,
} from "../../provider/allocation/gridengine";
import { clusterKey } from "../../provider/drivers/network";
import type { AllocationModel } from "../../provider/model/resolve";
import { vmSpec, waitForVm } from "../support/agent";
import { ensureGridEngine, GE_QUEUE } from "../support/gridengine";
import { goldensIn } from "../support/golden";
import { processesUnder, processEnded } from "../support/stack";

jest.setTimeout(300 * 1000);

const golden = goldensIn("allocation");

// Fixed paths, so the goldens do not depend on where the project or the temp directory is.
const JOB: BatchJob = {
  clusterName: "demo",
  clusterKey: "0123456789",
  hosts: 3,
  spoolDir: "/scratch/vse/vse-0123456789",
  launch: { clusterKey: "0123456789", imageStore: "/scratch/vse/images", policyFile: "/etc/vse/site-policy.yaml" },
  settings: { queue: "vm.q", walltime: "02:00:00", account: "proj_1" },
  node: "/usr/bin/node",
  agentMain: "/opt/vse/dist/provider/agent/main.js",
};

test("job array and parallel-environment scripts, and the qsub/qstat/qdel argument arrays, are the goldens", () => {
  golden("gridengine-array.sh", gridEngineScript(JOB));
  golden("gridengine-pe.sh", gridEngineScript({ ...JOB, settings: { ...JOB.settings, parallelEnvironment: "vse" } }));
  golden("gridengine-minimal.sh", gridEngineScript({ ...JOB, hosts: 1, settings: {}, launch: { ...JOB.launch, policyFile: undefined } }));
  const c = gridEngineCommands;
  golden(
    "gridengine-commands.json",
    `${JSON.stringify({ submit: c.submit(`${JOB.spoolDir}/job.sh`), query: c.query("42"), cancel: c.cancel("42") }, null, 2)}\n`,
  );
  expect(c.parseJobId("42.1-3:1\n")).toBe("42");
  expect(c.parseJobId("43")).toBe("43");
  expect(() => c.parseJobId("Your job 42 has been submitted")).toThrow(/qsub: expected a job id/);
  expect(() => c.cancel("42; rm -rf /")).toThrow(/job id: expected digits/);
});

test("settings are checked before anything is generated, each error naming its field", () => {
  expect(() => checkBatchSettings("gridengine", { queue: "-q evil" })).toThrow(/allocation\.gridengine\.queue: expected/);
  expect(() => checkBatchSettings("gridengine", { walltime: "2h" })).toThrow(/allocation\.gridengine\.walltime: expected HH:MM:SS/);
  expect(() => checkBatchSettings("gridengine", { walltime: "01:60:00" })).toThrow(/walltime/);
  expect(() => checkBatchSettings("gridengine", { account: "a b" })).toThrow(/allocation\.gridengine\.account/);
  expect(() => checkBatchSettings("gridengine", { parallelEnvironment: "$(id)" })).toThrow(/allocation\.gridengine\.parallelEnvironment/);
  expect(() => checkBatchSettings("gridengine", { spoolDir: "relative/dir" })).toThrow(/allocation\.gridengine\.spoolDir: expected an absolute path/);
  expect(() => gridEngineScript({ ...JOB, spoolDir: "/scratch/it's" })).toThrow(/spool directory: expected an absolute path/);
  expect(() => gridEngineScript({ ...JOB, hosts: 0 })).toThrow(/allocation\.hosts: expected 1 to 64/);
  expect(() => findCommand("gridengine", "qsub", gridEngineFlavour.install, { PATH: "/nonexistent" })).toThrow(
    "manager gridengine: the command qsub is not installed on this machine (not in PATH=/nonexistent); install Grid Engine's client (Debian: apt-get install gridengine-client)",
  );
});

describe("against the real Grid Engine daemons", () => {
  let dir: string;
  let req: AllocationRequest;

  beforeAll(async () => {
    await ensureGridEngine();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-ge-"));
    const k = clusterKey("test", path.basename(dir), "g");
    const allocation = { manager: "gridengine", hosts: 2, gridengine: { queue: GE_QUEUE, walltime: "00:30:00" } } as unknown as AllocationModel;
    req = {
      clusterName: "g",
      clusterKey: k,
      clusterDir: path.join(dir, "clusters", `g-${k}`),
      launch: { token: newClusterToken(k), clusterKey: k, imageStore: path.join(dir, "cache", "images") },
      allocation,
    };
  });

  afterAll(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test("a job array of 2 tasks runs one agent each, a QEMU job runs through one, and release leaves no job, agent, QEMU or spool", async () => {
    const t0 = Date.now();
    const state = await gridEngineAllocator.allocate(req);
    console.log(`Grid Engine job array of 2 agents answering in ${Date.now() - t0} ms`);
    const jobId = state.info.jobId;
    expect(state.info.gridengineJobId).toBe(jobId);
    // Its VMs keep this handle, to learn with their agent gone that the job ended.
    expect(state.ref).toBe(`gridengine:${jobId}`);
    expect(await allocationEnded(state.ref!)).toBeUndefined();
    expect(await gridEngineAllocator.status!(req, state)).toEqual({ active: true });
    expect(state.agents.map((a) => a.stateDir)).toEqual([0, 1].map((h) => path.join(req.clusterDir, `host-${h}`)));
    for (const a of state.agents) {
      expect(await gridEngineAllocator.healthy(req, state, a)).toBe(true);
      // Started by Grid Engine: the agent's ancestry holds sge_shepherd, whose job is ours.
      let pid = a.pid;
      const chain: string[] = [];
      for (let n = 0; n < 6 && pid > 1; n++) {
        chain.push(fs.readFileSync(`/proc/${pid}/comm`, "utf8").trim());
        pid = Number(
          fs
            .readFileSync(`/proc/${pid}/stat`, "utf8")
            .replace(/^.*\) /, "")
            .split(" ")[1],
        );
      }
      expect(chain).toContain("sge_shepherd");
    }
    const client = new AgentClient(state.agents[1].url, req.launch.token);
    await client.putVm("job-0", vmSpec({ key: req.clusterKey, cacheDir: path.join(dir, "cache") }, "job-0"));
    const v = await waitForVm(client, "job-0", (x) => x.job.state === "done", 150000);
    expect(v.job).toMatchObject({ state: "done", exitCode: 0 });
    expect(v.job.output).toContain("job-42");
    const qemuPid = v.observed.pid!;

    await gridEngineAllocator.release(req, state);
    expect(await allocationEnded(state.ref!)).toBe(`job ${jobId} is no longer known to gridengine`);
    expect(await gridEngineAllocator.status!(req, state)).toEqual({ active: false, reason: `job ${jobId} is no longer known to gridengine` });
    for (const a of state.agents) expect(processEnded(a.pid)).toBe(true);
    expect(processEnded(qemuPid)).toBe(true);
    expect(fs.existsSync(req.clusterDir)).toBe(false);
    expect(processesUnder(dir)).toEqual([]);
  });
});
