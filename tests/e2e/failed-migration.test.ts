// A live migration that fails half-way through `pulumi up`: the target's QEMU
// is killed (SIGKILL) as soon as the source's migration stream has connected
// to it, while the guest's memory is still being sent. `up` fails; the VM goes
// on running on the source, the same process, its loop still counting; the
// target agent holds nothing and no QEMU waits there. The next `up` (the
// fault was a one-off) migrates it.
import * as fs from "fs";
import * as path from "path";
import type { EngineEvent } from "@pulumi/pulumi/automation";
import { AgentClient } from "../../provider/agent/client";
import { qemuFacts, vmPaths } from "../../provider/drivers/qemu";
import { createTestStack, processesUnder, qemuProcessesFor, TestStack, upAndCheckNoDiff } from "../support/stack";

jest.setTimeout(5 * 60 * 1000);

const VM = "fmig-0";
const OTHER = "fmig-1";

// The job fills 64 MiB of guest RAM with random bytes first, so the migration
// has real data to send (QEMU 7.2's default bandwidth is 32 MiB/s) and the
// test has time to see the stream connect before it completes.
const DEFS = (host: number) => `apiVersion: vse.dev/v1
kind: Environment
metadata: { name: ticker-fill }
spec:
  job:
    command: ["/bin/sh", "-c", "dd if=/dev/urandom of=/fill bs=1M count=64 2>/dev/null; ( i=0; while sleep 1; do i=$((i+1)); echo tick $i; done ) & echo started"]
    afterJob: stay-up
    timeoutSeconds: 120
---
apiVersion: vse.dev/v1
kind: VmProfile
metadata: { name: medium }
spec: { memory: 256MiB, machine: pc, accel: auto }
---
apiVersion: vse.dev/v1
kind: VirtualCluster
metadata: { name: fmig }
spec:
  environment: ticker-fill
  profile: medium
  nodes: 2
  allocation: { manager: local, hosts: 2 }
  overrides: [{ vm: 0, host: ${host} }]
`;

let t: TestStack;

function ticks(file: string): number[] {
  const text = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : "";
  return [...text.matchAll(/^tick (\d+)\r?$/gm)].map((m) => Number(m[1]));
}

async function waitForTicks(file: string, after: number, count = 2): Promise<number[]> {
  for (let i = 0; i < 300; i++) {
    const tk = ticks(file).filter((n) => n > after);
    if (tk.length >= count) return tk;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no ticks after ${after} in ${file}: ${fs.existsSync(file) ? fs.readFileSync(file, "utf8").slice(-500) : "(missing)"}`);
}

/** Whether a connection to the unix socket at socketPath is established (an accepted socket carries the listener's path, state 03). */
function connectedTo(socketPath: string): boolean {
  return fs
    .readFileSync("/proc/net/unix", "utf8")
    .split("\n")
    .some((l) => {
      const f = l.trim().split(/\s+/);
      return f[7] === socketPath && f[5] === "03";
    });
}

async function agents(): Promise<AgentClient[]> {
  const cluster = (await t.stack.exportStack()).deployment.resources.find((r: { type: string }) => r.type === "pulumi-nodejs:dynamic/vse:VirtualCluster");
  const token = fs.readFileSync(path.join(t.hostDir("fmig", 0), "token"), "utf8");
  return cluster.outputs.agents.map((a: { url: string }) => new AgentClient(a.url, token));
}

beforeAll(async () => {
  t = await createTestStack({ "cluster.yaml": DEFS(0) });
});

afterAll(async () => {
  if (t) await t.cleanup();
});

test("a migration whose target dies mid-stream fails `up`, keeps the VM running on the source, leaves nothing on the target, and the next `up` migrates", async () => {
  const first = await upAndCheckNoDiff(t.stack);
  const before = first.outputs.vms.value as Record<string, { pid: number; output: string }>;
  expect(before[VM].output).toBe("started\n");
  const sourceDir = path.join(t.hostDir("fmig", 0), "vms", VM);
  const targetDir = path.join(t.hostDir("fmig", 1), "vms", VM);
  const sourceConsole = path.join(sourceDir, "console.log");
  await waitForTicks(sourceConsole, 0);

  // The fault: the moment the source's stream reaches the waiting target, the target's QEMU is killed.
  fs.writeFileSync(path.join(t.defsDir, "cluster.yaml"), DEFS(1));
  const migrateSock = path.join(targetDir, "migrate.sock");
  let killed: number | undefined;
  let watching = true;
  const watcher = (async () => {
    while (watching && killed === undefined) {
      if (connectedTo(migrateSock)) {
        const target = qemuProcessesFor(t.stateRoot, VM).filter((pid) => pid !== before[VM].pid);
        if (target.length === 1) {
          process.kill(target[0], "SIGKILL");
          killed = target[0];
        }
      }
      await new Promise((r) => setTimeout(r, 2));
    }
  })();
  const warnings: string[] = [];
  let message = "";
  try {
    await t.stack.up({
      onEvent: (e: EngineEvent) => {
        if (e.diagnosticEvent?.severity === "warning") warnings.push(e.diagnosticEvent.message);
      },
    });
  } catch (err) {
    message = String((err as Error).message);
  } finally {
    watching = false;
    await watcher;
  }
  expect(killed).toBeDefined();
  // It failed in QEMU's migration itself (query-migrate: failed), after the stream had started, not before.
  expect(message).toContain(`failed: qemu: migration of ${VM} failed: `);
  expect(message).toContain(`migration of ${VM} to unix:${migrateSock} failed`);
  expect(message).toContain("the VM keeps running on the source");
  // The waiting target was removed cleanly: no warning about a target left behind.
  expect(warnings.filter((w) => w.includes("waiting target"))).toEqual([]);

  // The source: the same QEMU, running (not left paused), its loop still counting on.
  expect(qemuProcessesFor(t.stateRoot, VM)).toEqual([before[VM].pid]);
  expect((await qemuFacts(vmPaths(sourceDir))).status).toBe("running");
  const last = ticks(sourceConsole).pop()!;
  const more = await waitForTicks(sourceConsole, last);
  expect(more[0]).toBe(last + 1);
  const [source, target] = await agents();
  expect((await source.getVm(VM))?.observed).toEqual(expect.objectContaining({ state: "running", pid: before[VM].pid }));
  // The target: no VM held, no QEMU waiting (no process with -incoming anywhere under the stack), no files of the VM.
  expect((await target.request<{ vms: { name: string }[] }>("GET", "/v1/vms")).vms.map((v) => v.name)).toEqual([OTHER]);
  expect(processesUnder(t.stateRoot).filter((p) => p.argv.includes("-incoming"))).toEqual([]);
  expect(fs.existsSync(targetDir)).toBe(false);
  // The other VM was not touched, and the stack still records the VM on host 0.
  expect(qemuProcessesFor(t.stateRoot, OTHER)).toEqual([before[OTHER].pid]);
  const vmRes = (await t.stack.exportStack()).deployment.resources.find((r: { urn: string }) => r.urn.endsWith(`vse:VirtualMachine::${VM}`));
  expect(vmRes.outputs).toEqual(expect.objectContaining({ host: 0, pid: before[VM].pid, status: "running" }));

  // The fault was a one-off: the next up migrates, and the loop carries on at the target.
  const lastOnSource = ticks(sourceConsole).pop()!;
  const res = await upAndCheckNoDiff(t.stack);
  const after = res.outputs.vms.value as Record<string, { pid: number; output: string; status: string }>;
  expect(after[VM]).toEqual(expect.objectContaining({ status: "running", output: "started\n" }));
  expect(after[VM].pid).not.toBe(before[VM].pid);
  expect(qemuProcessesFor(t.stateRoot, VM)).toEqual([after[VM].pid]);
  const onTarget = await waitForTicks(path.join(targetDir, "console.log"), lastOnSource);
  expect(onTarget.every((n, i) => i === 0 || n === onTarget[i - 1] + 1)).toBe(true);
  expect(await source.getVm(VM)).toBeUndefined();
  expect((await target.getVm(VM))?.observed.pid).toBe(after[VM].pid);
  expect(processesUnder(t.stateRoot).filter((p) => p.argv.includes("-incoming") && p.pid !== after[VM].pid)).toEqual([]);
});
