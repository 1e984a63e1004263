// The agent with real QEMU guests: a restarted agent re-adopts its running VM
// instead of starting a second one, and a power-off job ends the VM cleanly.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { AgentClient } from "../../provider/agent/client";
import type { VmSpec, VmView } from "../../provider/agent/protocol";
import { AgentRecord, newToken, startLocalAgent, stopLocalAgent } from "../../provider/allocation/local";
import { buildImage, markersFor } from "../../provider/image/busybox";
import type { EnvironmentModel, VmModel } from "../../provider/model/resolve";
import { renderVmConfig } from "../../provider/render/render";
import { processesUnder, qemuProcessesFor } from "../support/stack";

jest.setTimeout(5 * 60 * 1000);

let dir: string;
const token = newToken();
let agents: AgentRecord[] = [];

function env(afterJob: "stay-up" | "power-off"): EnvironmentModel {
  return {
    name: "t",
    base: "busybox",
    kernelArgs: [],
    job: { command: ["/bin/sh", "-c", "echo job-$((6*7))"], env: { A: "it's" }, afterJob, timeoutSeconds: 60 },
  };
}

function spec(name: string, e: EnvironmentModel): VmSpec {
  const img = buildImage(e, path.join(dir, "cache"));
  const vm: VmModel = { name, index: 0, host: 0, profile: { name: "p", hypervisor: "qemu", memoryMiB: 128, vcpus: 1, machine: "pc", accel: "tcg" } };
  return {
    hypervisor: "qemu",
    config: renderVmConfig({ cluster: "c", vm, image: img, accel: "tcg", kernelArgs: [] }),
    markers: markersFor(img.id),
    stopGraceSeconds: 0,
  };
}

async function waitFor(client: AgentClient, name: string, done: (v: VmView) => boolean): Promise<VmView> {
  const end = Date.now() + 60000;
  for (;;) {
    const v = await client.getVm(name);
    if (v && done(v)) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${name}: ${JSON.stringify(v?.observed)}\n${v?.consoleTail}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-sup-"));
});

afterAll(async () => {
  for (const a of agents) await stopLocalAgent(a, token);
  expect(processesUnder(dir)).toEqual([]);
  fs.rmSync(dir, { recursive: true, force: true });
});

test("an agent killed and restarted re-adopts its running VM and never starts a duplicate", async () => {
  const hostDir = path.join(dir, "host-0");
  const first = await startLocalAgent(hostDir, token, 0);
  agents = [first];
  const client = new AgentClient(first.url, token);
  const s = spec("vm-adopt", env("stay-up"));
  await client.putVm("vm-adopt", s);
  const v = await waitFor(client, "vm-adopt", (x) => x.job.state === "done");
  expect(v.job).toEqual({ state: "done", exitCode: 0, output: "job-42\n" });
  const pid = v.observed.pid!;

  process.kill(first.pid, "SIGKILL");
  await new Promise((r) => setTimeout(r, 200));
  expect(qemuProcessesFor(dir, "vm-adopt")).toEqual([pid]);

  const second = await startLocalAgent(hostDir, token, 0, first.port);
  agents = [second];
  expect(second.port).toBe(first.port);
  const again = await client.getVm("vm-adopt");
  expect(again?.observed).toEqual(expect.objectContaining({ state: "running", pid, starts: 1, message: "re-adopted after an agent restart" }));
  // The same desired state again is a no-op: same process, no second QEMU.
  const put = await client.putVm("vm-adopt", s);
  expect(put.observed.pid).toBe(pid);
  expect(put.observed.starts).toBe(1);
  expect(qemuProcessesFor(dir, "vm-adopt")).toEqual([pid]);
  // The persisted state is whole JSON (written atomically), naming the VM.
  const state = JSON.parse(fs.readFileSync(path.join(hostDir, "state.json"), "utf8"));
  expect(state.vms.map((x: { name: string }) => x.name)).toEqual(["vm-adopt"]);

  await client.deleteVm("vm-adopt");
  expect(qemuProcessesFor(dir, "vm-adopt")).toEqual([]);
  expect(await client.getVm("vm-adopt")).toBeUndefined();
});

test("a power-off job ends its VM, which the agent reports as exited, not failed", async () => {
  const client = new AgentClient(agents[0].url, token);
  await client.putVm("vm-batch", spec("vm-batch", env("power-off")));
  const v = await waitFor(client, "vm-batch", (x) => x.observed.state !== "running" && x.observed.state !== "starting");
  expect(v.observed.state).toBe("exited");
  expect(v.observed.lastExit).toEqual(expect.objectContaining({ code: 0, signal: null, expected: false }));
  expect(v.job.output).toBe("job-42\n");
  expect(qemuProcessesFor(dir, "vm-batch")).toEqual([]);
});
