// The `alps` allocation manager (issue 10; Cray's ALPS inside a PBS job): not
// exercised against a real ALPS system. The job script (aprun -n N -N 1) is
// checked against a golden (UPDATE_GOLDEN=1 rewrites it, never under CI), and
// allocate, which runs the real qsub, says what is missing on this machine.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { alpsAllocator, alpsScript } from "../../provider/allocation/alps";
import { BatchJob } from "../../provider/allocation/gridengine";
import type { AllocationModel } from "../../provider/model/resolve";
import { newClusterToken } from "../../provider/agent/protocol";
import { goldensIn } from "../support/golden";

const golden = goldensIn("allocation");

const JOB: BatchJob = {
  clusterName: "demo",
  clusterKey: "0123456789",
  hosts: 8,
  spoolDir: "/lus/scratch/vse/vse-0123456789",
  launch: { clusterKey: "0123456789", imageStore: "/lus/scratch/vse/images", policyFile: "/etc/vse/site-policy.yaml" },
  settings: { queue: "workq", walltime: "00:45:00" },
  node: "/usr/bin/node",
  agentMain: "/opt/vse/dist/provider/agent/main.js",
};

test("the job script runs aprun -n N -N 1 inside the PBS job, and is the golden", () => {
  golden("alps.sh", alpsScript(JOB));
  expect(alpsScript(JOB)).toContain("aprun -n 8 -N 1 ");
  expect(() => alpsScript({ ...JOB, settings: { walltime: "45" } })).toThrow(/allocation\.alps\.walltime: expected HH:MM:SS/);
  expect(() => alpsScript({ ...JOB, launch: { ...JOB.launch, imageStore: "/lus/$(id)" } })).toThrow(/image store: expected an absolute path/);
});

test("allocate without qsub: the error names the command and what to install", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-alps-"));
  const saved = process.env.PATH;
  try {
    process.env.PATH = path.join(dir, "bin");
    const k = "00000000cd";
    await expect(
      alpsAllocator.allocate({
        clusterName: "a",
        clusterKey: k,
        clusterDir: path.join(dir, "c"),
        launch: { token: newClusterToken(k), clusterKey: k, imageStore: path.join(dir, "images") },
        allocation: { manager: "alps", hosts: 2 } as unknown as AllocationModel,
      }),
    ).rejects.toThrow(`manager alps: the command qsub is not installed on this machine (not in PATH=${path.join(dir, "bin")}); install the PBS client`);
    expect(fs.existsSync(path.join(dir, "c"))).toBe(false);
  } finally {
    process.env.PATH = saved;
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
