// `destroy` of a cluster whose node agents were killed (SIGKILL, no chance to
// clean up): the provider removes every VM through the agent's own code and
// drivers over the dead agent's state, warns that the agent was unreachable,
// and leaves no QEMU, no agent, no libvirt domain and no state directory. One
// dead agent does not stop the others' hosts from being cleaned.
import * as fs from "fs";
import * as path from "path";
import type { EngineEvent } from "@pulumi/pulumi/automation";
import { listDomains } from "../../provider/drivers/libvirt";
import { clusterKey, domainName } from "../../provider/drivers/network";
import { libvirtdForTest } from "../support/libvirtd";
import { createTestStack, exampleDefinitions, processesUnder, qemuProcessesFor, TestStack, upAndCheckNoDiff } from "../support/stack";

jest.setTimeout(5 * 60 * 1000);

const CLUSTER = "local-cluster";
const VMS = [`${CLUSTER}-0`, `${CLUSTER}-1`];

function alive(pid: number): boolean {
  try {
    return !/\) Z /.test(fs.readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

/** SIGKILLs the agent of one host (its pid from <hostDir>/agent.json) and waits until it is gone. */
async function killAgent(t: TestStack, host: number): Promise<number> {
  const { pid } = JSON.parse(fs.readFileSync(path.join(t.hostDir(CLUSTER, host), "agent.json"), "utf8")) as { pid: number };
  expect(alive(pid)).toBe(true);
  process.kill(pid, "SIGKILL");
  for (let i = 0; i < 100 && alive(pid); i++) await new Promise((r) => setTimeout(r, 50));
  expect(alive(pid)).toBe(false);
  return pid;
}

/** QEMU processes of libvirt domains of this cluster (their argv names the domain: guest=vse-<key>-<vm>). */
function libvirtQemus(prefix: string): number[] {
  return fs
    .readdirSync("/proc")
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return fs.readFileSync(`/proc/${p}/cmdline`, "utf8").includes(`guest=${prefix}`) && alive(Number(p));
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** destroy, collecting the engine's warnings (diagnostic events of severity warning). */
async function destroyCollectingWarnings(t: TestStack): Promise<{ result: string; warnings: string[] }> {
  const warnings: string[] = [];
  const res = await t.stack.destroy({
    onEvent: (e: EngineEvent) => {
      if (e.diagnosticEvent?.severity === "warning") warnings.push(e.diagnosticEvent.message);
    },
  });
  return { result: res.summary.result, warnings };
}

function expectNothingLeft(t: TestStack): void {
  expect(processesUnder(t.stateRoot)).toEqual([]);
  expect(fs.existsSync(path.dirname(t.hostDir(CLUSTER, 0)))).toBe(false);
  const clusters = path.join(t.stateRoot, "clusters");
  expect(fs.existsSync(clusters) ? fs.readdirSync(clusters) : []).toEqual([]);
}

describe("qemu", () => {
  let t: TestStack;
  afterEach(async () => {
    if (t) await t.cleanup();
  });

  test("every agent killed: destroy succeeds, warns for each VM, and leaves no QEMU, agent or state", async () => {
    t = await createTestStack({ "cluster.yaml": exampleDefinitions() });
    await upAndCheckNoDiff(t.stack);
    const qemus = VMS.map((vm) => qemuProcessesFor(t.stateRoot, vm));
    for (const q of qemus) expect(q).toHaveLength(1);
    await killAgent(t, 0);
    await killAgent(t, 1);
    // The guests outlive their agents.
    for (const [i, vm] of VMS.entries()) expect(qemuProcessesFor(t.stateRoot, vm)).toEqual(qemus[i]);

    const { result, warnings } = await destroyCollectingWarnings(t);
    expect(result).toBe("succeeded");
    for (const vm of VMS) {
      expect(warnings).toContainEqual(expect.stringContaining(`VM ${vm}: its agent was unreachable`));
      expect(warnings).toContainEqual(expect.stringContaining("removed it through the drivers directly"));
    }
    for (const q of qemus.flat()) expect(alive(q)).toBe(false);
    expectNothingLeft(t);
  });

  test("one agent dead, the other alive: destroy cleans both hosts, and warns only for the dead one's VM", async () => {
    t = await createTestStack({ "cluster.yaml": exampleDefinitions() });
    await upAndCheckNoDiff(t.stack);
    const qemus = VMS.map((vm) => qemuProcessesFor(t.stateRoot, vm)).flat();
    expect(qemus).toHaveLength(2);
    await killAgent(t, 0);

    const { result, warnings } = await destroyCollectingWarnings(t);
    expect(result).toBe("succeeded");
    expect(warnings.filter((w) => w.includes("its agent was unreachable"))).toEqual([expect.stringContaining(`VM ${VMS[0]}: its agent was unreachable`)]);
    for (const q of qemus) expect(alive(q)).toBe(false);
    expectNothingLeft(t);
  });
});

describe("libvirt", () => {
  let t: TestStack;
  let stopDaemons: (() => Promise<void>) | undefined;

  beforeAll(async () => {
    stopDaemons = await libvirtdForTest();
  });

  afterAll(async () => {
    try {
      if (t) await t.cleanup();
    } finally {
      if (stopDaemons) await stopDaemons();
    }
  });

  test("every agent killed: destroy succeeds and no domain of the cluster's key is left, defined or running", async () => {
    t = await createTestStack({ "cluster.yaml": exampleDefinitions().replace("hypervisor: qemu", "hypervisor: libvirt") });
    await upAndCheckNoDiff(t.stack);
    const prefix = domainName(clusterKey("vse", t.name, CLUSTER), "");
    expect((await listDomains()).filter((d) => d.startsWith(prefix)).sort()).toEqual(VMS.map((vm) => `${prefix}${vm}`));
    const qemus = libvirtQemus(prefix);
    expect(qemus).toHaveLength(2);
    await killAgent(t, 0);
    await killAgent(t, 1);

    const { result, warnings } = await destroyCollectingWarnings(t);
    expect(result).toBe("succeeded");
    for (const vm of VMS) expect(warnings).toContainEqual(expect.stringContaining(`VM ${vm}: its agent was unreachable`));
    expect((await listDomains()).filter((d) => d.startsWith(prefix))).toEqual([]);
    expect(libvirtQemus(prefix)).toEqual([]);
    expectNothingLeft(t);
  });
});
