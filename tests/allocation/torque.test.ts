// The `torque` allocation manager (issue 10): not exercised against a real
// PBS server (Debian 12 has none). The generated job script and the qsub /
// qstat / qdel argument arrays are checked against goldens (UPDATE_GOLDEN=1
// rewrites them, never under CI); allocate runs the real qsub, so on this
// machine it must say which command is missing and what to install, and
// refuse Grid Engine's qsub when that is the one in PATH.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import type { AllocationRequest } from "../../provider/allocation/allocator";
import { BatchJob } from "../../provider/allocation/gridengine";
import { pbsCommands, torqueAllocator, torqueScript } from "../../provider/allocation/torque";
import type { AllocationModel } from "../../provider/model/resolve";
import { newClusterToken } from "../../provider/agent/protocol";
import { goldensIn } from "../support/golden";

const golden = goldensIn("allocation");

const JOB: BatchJob = {
  clusterName: "demo",
  clusterKey: "0123456789",
  hosts: 4,
  spoolDir: "/scratch/vse/vse-0123456789",
  launch: { clusterKey: "0123456789", imageStore: "/scratch/vse/images" },
  settings: { queue: "batch", walltime: "12:00:00", account: "proj_1" },
  node: "/usr/bin/node",
  agentMain: "/opt/vse/dist/provider/agent/main.js",
};

test("the job script (nodes=N:ppn=1, walltime, pbsdsh -u) and the PBS commands are the goldens", () => {
  golden("torque.sh", torqueScript(JOB));
  golden("torque-minimal.sh", torqueScript({ ...JOB, hosts: 1, settings: {} }));
  golden(
    "pbs-commands.json",
    `${JSON.stringify({ submit: pbsCommands.submit(`${JOB.spoolDir}/job.sh`), query: pbsCommands.query("17.pbs01"), cancel: pbsCommands.cancel("17.pbs01") }, null, 2)}\n`,
  );
  expect(pbsCommands.parseJobId("17.pbs01.example.org\n")).toBe("17.pbs01.example.org");
  expect(() => pbsCommands.parseJobId("qsub: Bad UID for job execution")).toThrow(/expected a PBS job id/);
  expect(() => torqueScript({ ...JOB, settings: { walltime: "12h" } })).toThrow(/allocation\.torque\.walltime: expected HH:MM:SS/);
  expect(() => torqueScript({ ...JOB, settings: { queue: "batch queue" } })).toThrow(/allocation\.torque\.queue/);
  expect(() => torqueScript({ ...JOB, settings: { parallelEnvironment: "vse" } })).toThrow(
    /allocation\.torque\.parallelEnvironment: only for manager gridengine/,
  );
});

describe("allocate runs the real qsub", () => {
  let dir: string;
  let req: AllocationRequest;
  const savedPath = process.env.PATH;

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-pbs-"));
    const k = "00000000ab";
    req = {
      clusterName: "t",
      clusterKey: k,
      clusterDir: path.join(dir, "clusters", "t"),
      launch: { token: newClusterToken(k), clusterKey: k, imageStore: path.join(dir, "images") },
      allocation: { manager: "torque", hosts: 2, torque: { walltime: "00:10:00" } } as unknown as AllocationModel,
    };
  });

  afterEach(() => {
    process.env.PATH = savedPath;
  });

  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test("without any qsub: the error names the command and what to install, and nothing is made", async () => {
    const empty = path.join(dir, "empty-bin");
    fs.mkdirSync(empty);
    process.env.PATH = empty;
    await expect(torqueAllocator.allocate(req)).rejects.toThrow(
      `manager torque: the command qsub is not installed on this machine (not in PATH=${empty}); install a Torque or OpenPBS client`,
    );
    expect(fs.existsSync(req.clusterDir)).toBe(false);
  });

  test("with Grid Engine's qsub first in PATH: refused, it cannot take a PBS script", async () => {
    if (!fs.existsSync("/usr/bin/qsub")) throw new Error("this test needs Grid Engine's qsub (gridengine-client, from scripts/setup.sh)");
    process.env.PATH = "/usr/bin:/bin";
    await expect(torqueAllocator.allocate(req)).rejects.toThrow(
      "manager torque: /usr/bin/qsub is Grid Engine's qsub, not Torque/PBS's; install a Torque or OpenPBS client",
    );
    expect(fs.existsSync(req.clusterDir)).toBe(false);
  });
});
