// The VirtualMachine provider's update against real agents: a migration that
// an interruption cut short after the VM had landed on its target is adopted
// there (the job is not waited for again, nothing boots twice), whatever the
// refreshed state says of the source.
import { moveVm, VirtualMachineInputs, VirtualMachineOutputs, vmUpdate } from "../../provider/resources/virtual-machine";
import { TestCluster, useTestCluster, vmSpec, waitForVm } from "../support/agent";
import { qemuProcessesFor } from "../support/stack";
import { testVmInputs } from "../support/vm-inputs";

jest.setTimeout(5 * 60 * 1000);

const cluster = useTestCluster([0, 1]);
let c: TestCluster;
beforeAll(() => (c = cluster()));

test("an update to a new host adopts the VM that already landed there instead of booting it again", async () => {
  const spec = vmSpec(c, "mv-0");
  // The VM ran its job on host 0 and was live-migrated to host 1 (its console there has no job result);
  // the stack still records host 0, where refresh found it missing.
  await c.client(c.agents[0]).putVm("mv-0", spec);
  await waitForVm(c.client(c.agents[0]), "mv-0", (v) => v.job.state === "done");
  await moveVm(c.client(c.agents[0]), c.client(c.agents[1]), "mv-0", spec);
  const landed = (await c.client(c.agents[1]).getVm("mv-0"))!;
  expect(landed.job.state).toBe("waiting");
  const inputs = (host: number): VirtualMachineInputs =>
    testVmInputs(spec, {
      cluster: "c",
      vmName: "mv-0",
      host,
      agentUrl: c.agents[host].url,
      token: c.launch.token,
      agentCa: null,
      allocationRef: null,
      jobTimeoutSeconds: 20,
    });
  const olds: VirtualMachineOutputs = {
    ...inputs(0),
    status: "missing",
    pid: null,
    starts: 1,
    jobOutput: "job-42\n",
    jobExitCode: 0,
    jobSeconds: 5,
    message: null,
    launch: "cold",
  };
  // Waiting for a job result here would fail: the landed guest's job never reports again (jobTimeoutSeconds 20).
  const { outs } = await vmUpdate(olds, inputs(1));
  expect(outs).toEqual(expect.objectContaining({ host: 1, status: "running", pid: landed.observed.pid, jobOutput: "job-42\n", jobExitCode: 0 }));
  expect(qemuProcessesFor(c.dir, "mv-0")).toEqual([landed.observed.pid]);
  await c.client(c.agents[1]).deleteVm("mv-0");
});
