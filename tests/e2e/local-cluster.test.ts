// End to end on real components: the Pulumi engine (Automation API, file
// backend in a temp dir), the node agents as daemons, QEMU guests booting the
// tiny VSE. The steps share one stack and run in order.
import * as fs from "fs";
import * as path from "path";
import type { EngineEvent } from "@pulumi/pulumi/automation";
import { AgentClient } from "../../provider/agent/client";
import { TOKEN_PATTERN } from "../../provider/agent/protocol";
import { clusterKey } from "../../provider/drivers/network";
import { qemuFacts, vmPaths, processArgv } from "../../provider/drivers/qemu";
import { createTestStack, exampleDefinitions, processesUnder, qemuProcessesFor, TestStack, upAndCheckNoDiff } from "../support/stack";

jest.setTimeout(15 * 60 * 1000);

interface VmOut {
  status: string;
  output: string | null;
  exitCode: number | null;
  pid: number | null;
}

let t: TestStack;
const VM0 = "local-cluster-0";
const VM1 = "local-cluster-1";

async function vmOutputs(): Promise<Record<string, VmOut>> {
  return (await t.stack.outputs()).vms.value as Record<string, VmOut>;
}

interface Step {
  op: string;
  urn: string;
  /** Inputs whose old and new values differ, as the engine shows them in `preview --diff`. */
  changed: string[];
  oldConfig?: string;
  newConfig?: string;
}

/** Each resource's step in a preview, from the engine's events: op, URN, changed inputs, old and new config. */
async function previewSteps(): Promise<{ steps: Step[]; summary: Record<string, number> }> {
  const steps: Step[] = [];
  const res = await t.stack.preview({
    diff: true,
    onEvent: (e: EngineEvent) => {
      const m = e.resourcePreEvent?.metadata;
      if (!m) return;
      const olds = (m.old?.inputs ?? {}) as Record<string, unknown>;
      const news = (m.new?.inputs ?? {}) as Record<string, unknown>;
      const changed = [...new Set([...Object.keys(olds), ...Object.keys(news)])].filter((k) => JSON.stringify(olds[k]) !== JSON.stringify(news[k]));
      steps.push({ op: m.op, urn: m.urn, changed, oldConfig: olds.config as string | undefined, newConfig: news.config as string | undefined });
    },
  });
  return { steps, summary: res.changeSummary as Record<string, number> };
}

function opsFor(steps: Step[], vm: string): string[] {
  return steps.filter((s) => s.urn.endsWith(`vse:VirtualMachine::${vm}`)).map((s) => s.op);
}

async function agentFor(host: number): Promise<AgentClient> {
  const deployment = await t.stack.exportStack();
  const cluster = deployment.deployment.resources.find((r: { type: string }) => r.type === "pulumi-nodejs:dynamic/vse:VirtualCluster");
  const token = fs.readFileSync(path.join(t.hostDir("local-cluster", host), "token"), "utf8");
  return new AgentClient(cluster.outputs.agents[host].url, token);
}

beforeAll(async () => {
  t = await createTestStack({ "cluster.yaml": exampleDefinitions() });
});

afterAll(async () => {
  if (t) await t.cleanup();
});

test("up boots a 2-VM cluster on 2 agents and each job prints the sum", async () => {
  const res = await upAndCheckNoDiff(t.stack);
  expect(res.summary.result).toBe("succeeded");
  const vms = await vmOutputs();
  for (const vm of [VM0, VM1]) {
    expect(vms[vm].status).toBe("running");
    expect(vms[vm].output).toBe("5\n");
    expect(vms[vm].exitCode).toBe(0);
    expect(qemuProcessesFor(t.stateRoot, vm)).toEqual([vms[vm].pid]);
  }
  // Two agents, each a separate daemon with its own state directory.
  const agents = processesUnder(t.stateRoot).filter((p) => p.argv.some((a) => a.endsWith("agent/main.js")));
  expect(agents).toHaveLength(2);
  expect(fs.existsSync(path.join(t.hostDir("local-cluster", 0), "state.json"))).toBe(true);
  expect(fs.existsSync(path.join(t.hostDir("local-cluster", 1), "state.json"))).toBe(true);
  // The token is a secret: the checkpoint on disk holds it only encrypted.
  const checkpoint = fs.readFileSync(path.join(t.dir, "backend", ".pulumi", "stacks", "vse", `${t.name}.json`), "utf8");
  const token = fs.readFileSync(path.join(t.hostDir("local-cluster", 0), "token"), "utf8");
  expect(TOKEN_PATTERN.exec(token)?.[1]).toBe(clusterKey("vse", t.name, "local-cluster"));
  expect(checkpoint).toContain("ciphertext");
  expect(checkpoint).not.toContain(token);
});

test("preview right after up reports no changes", async () => {
  const { steps, summary } = await previewSteps();
  expect(steps.filter((s) => s.op !== "same")).toEqual([]);
  expect(Object.keys(summary)).toEqual(["same"]);
});

test("changing one VM's memory updates only that VM, restarting it with the new memory", async () => {
  const before = await vmOutputs();
  const text = exampleDefinitions().replace("nodes: 2", "nodes: 2\n  overrides:\n    - vm: 1\n      memory: 384MiB");
  fs.writeFileSync(path.join(t.defsDir, "cluster.yaml"), text);

  const { steps, summary } = await previewSteps();
  expect(steps.filter((s) => s.op !== "same")).toEqual([expect.objectContaining({ op: "update", urn: expect.stringContaining(`::${VM1}`) })]);
  expect(summary.update).toBe(1);
  expect(Object.keys(summary).sort()).toEqual(["same", "update"]);
  // What a reviewer sees: the changed inputs, and the rendered config differing in exactly the memory line.
  const step = steps.find((s) => s.op === "update")!;
  expect(step.changed.sort()).toEqual(["config", "memoryMiB"]);
  const oldLines = step.oldConfig!.split("\n");
  const newLines = step.newConfig!.split("\n");
  expect(oldLines.filter((l) => !newLines.includes(l))).toEqual(["-m 256M"]);
  expect(newLines.filter((l) => !oldLines.includes(l))).toEqual(["-m 384M"]);

  const res = await upAndCheckNoDiff(t.stack);
  expect(res.summary.resourceChanges?.update).toBe(1);
  const after = await vmOutputs();
  expect(after[VM0].pid).toBe(before[VM0].pid);
  expect(after[VM1].pid).not.toBe(before[VM1].pid);
  expect(after[VM1].output).toBe("5\n");
  // The restarted guest really has the new memory: QEMU's argv and QMP agree.
  const argv = processArgv(after[VM1].pid!);
  expect(argv[argv.indexOf("-m") + 1]).toBe("384M");
  const facts = await qemuFacts(vmPaths(path.join(t.hostDir("local-cluster", 1), "vms", VM1)));
  expect(facts.memoryMiB).toBe(384);
  expect(facts.status).toBe("running");
  expect(qemuProcessesFor(t.stateRoot, VM0)).toEqual([before[VM0].pid]);
});

test("changing the environment's job replaces the VMs that use it and runs the new job", async () => {
  const file = path.join(t.defsDir, "cluster.yaml");
  fs.writeFileSync(file, fs.readFileSync(file, "utf8").replace("echo $((2+3))", "echo $((20+22))"));
  const { steps } = await previewSteps();
  for (const vm of [VM0, VM1]) expect(opsFor(steps, vm)).toContain("replace");
  expect(steps.filter((s) => s.urn.endsWith("vse:Environment::busybox-sum")).map((s) => s.op)).toContain("replace");

  await upAndCheckNoDiff(t.stack);
  const vms = await vmOutputs();
  for (const vm of [VM0, VM1]) {
    expect(vms[vm].output).toBe("42\n");
    expect(qemuProcessesFor(t.stateRoot, vm)).toEqual([vms[vm].pid]);
  }
});

test("a QEMU killed with SIGKILL is reported by its agent, shown by refresh, and brought back by the next up", async () => {
  const vms = await vmOutputs();
  const pid = vms[VM0].pid!;
  process.kill(pid, "SIGKILL");

  const agent = await agentFor(0);
  let view = await agent.getVm(VM0);
  for (let i = 0; i < 100 && view?.observed.state !== "failed"; i++) {
    await new Promise((r) => setTimeout(r, 100));
    view = await agent.getVm(VM0);
  }
  expect(view?.observed.state).toBe("failed");
  expect(view?.observed.lastExit?.signal).toBe("SIGKILL");
  expect(qemuProcessesFor(t.stateRoot, VM0)).toEqual([]);

  await t.stack.refresh();
  const deployment = await t.stack.exportStack();
  const vm0 = deployment.deployment.resources.find((r: { urn: string }) => r.urn.endsWith(`::${VM0}`));
  expect(vm0.outputs.status).toBe("failed");
  expect(vm0.outputs.pid).toBeNull();

  const { steps } = await previewSteps();
  expect(opsFor(steps, VM0)).toEqual(["update"]);
  expect(opsFor(steps, VM1)).toEqual(["same"]);

  await upAndCheckNoDiff(t.stack);
  const after = await vmOutputs();
  expect(after[VM0].status).toBe("running");
  expect(after[VM0].output).toBe("42\n");
  expect(qemuProcessesFor(t.stateRoot, VM0)).toEqual([after[VM0].pid]);
  // A second up changes nothing and never starts a second QEMU for the VM.
  await upAndCheckNoDiff(t.stack);
  expect(qemuProcessesFor(t.stateRoot, VM0)).toEqual([after[VM0].pid]);
});

test("a dead agent is seen by refresh and restarted by up, re-adopting its running VM", async () => {
  const before = await vmOutputs();
  const deployment = await t.stack.exportStack();
  const cluster = deployment.deployment.resources.find((r: { type: string }) => r.type === "pulumi-nodejs:dynamic/vse:VirtualCluster");
  const agent1 = cluster.outputs.agents[1];
  process.kill(agent1.pid, "SIGKILL");
  await new Promise((r) => setTimeout(r, 200));

  await t.stack.refresh();
  const refreshed = (await t.stack.exportStack()).deployment.resources.find((r: { type: string }) => r.type === "pulumi-nodejs:dynamic/vse:VirtualCluster");
  expect(refreshed.outputs.agents.map((a: { healthy: boolean }) => a.healthy)).toEqual([true, false]);
  const vm1 = (await t.stack.exportStack()).deployment.resources.find((r: { urn: string }) => r.urn.endsWith(`::${VM1}`));
  expect(vm1.outputs.status).toBe("unreachable");

  await upAndCheckNoDiff(t.stack);
  const after = await vmOutputs();
  // Same guest processes: the restarted agent adopted VM1 rather than booting it again.
  expect(after[VM1].pid).toBe(before[VM1].pid);
  expect(after[VM0].pid).toBe(before[VM0].pid);
  expect(after[VM1].status).toBe("running");
  const agent = await agentFor(1);
  expect(agent.url).toBe(agent1.url);
  expect((await agent.getVm(VM1))?.observed.message).toBe("re-attached after an agent restart");
});

test("destroy leaves no QEMU or agent process and removes the state directories", async () => {
  expect(processesUnder(t.stateRoot).length).toBeGreaterThan(0);
  await t.stack.destroy();
  expect(processesUnder(t.stateRoot)).toEqual([]);
  expect(fs.existsSync(path.dirname(t.hostDir("local-cluster", 0)))).toBe(false);
  const clusters = path.join(t.stateRoot, "clusters");
  expect(fs.existsSync(clusters) ? fs.readdirSync(clusters) : []).toEqual([]);
});
