// Fault injection: agents SIGKILLed at random points while they create,
// update (restart), migrate and delete VMs. After each kill the agent is
// restarted and the declared state is applied once more, through the same
// agent calls a `pulumi up` makes (PUT desired state, DELETE, and the
// provider's own moveVm for a migration). Then exactly one QEMU runs per
// declared VM, on its declared host: none orphaned, none lost.
// The figure (kills survived / kills tried) is printed for the README.
import * as fs from "fs";
import * as path from "path";
import type { VmSpec } from "../../provider/agent/protocol";
import { moveVm } from "../../provider/resources/virtual-machine";
import { jobEnv, TestCluster, useTestCluster, vmSpec } from "../support/agent";
import { processesUnder } from "../support/stack";

const KILLS = Number(process.env.FAULT_KILLS ?? 110);
jest.setTimeout(30 * 60 * 1000);

/** A small deterministic generator, so a failing run can be repeated with FAULT_SEED. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Declared = Map<string, { host: number; spec: VmSpec }>;

const cluster = useTestCluster([0, 1]);
let c: TestCluster;
beforeAll(() => (c = cluster()));

/** The QEMU processes of the test: VM name and the host whose state holds its pidfile. */
function qemus(): { name: string; host: number; pid: number }[] {
  return processesUnder(c.dir)
    .filter((p) => path.basename(p.argv[0]).startsWith("qemu-system"))
    .map((p) => {
      const pidfile = p.argv[p.argv.indexOf("-pidfile") + 1] ?? "";
      return { name: p.argv[p.argv.indexOf("-name") + 1], host: Number(/host-(\d+)/.exec(pidfile)?.[1] ?? -1), pid: p.pid };
    });
}

async function killAgent(host: number): Promise<void> {
  const a = c.agents[host];
  try {
    process.kill(a.pid, "SIGKILL");
  } catch {
    // already gone
  }
  while (fs.existsSync(`/proc/${a.pid}/cmdline`) && fs.readFileSync(`/proc/${a.pid}/cmdline`).length > 0) await new Promise((r) => setTimeout(r, 10));
}

/** What `pulumi up` does for the declared state: remove what is not declared, move what is on the wrong host, PUT the rest. */
async function reconcile(declared: Declared): Promise<void> {
  for (const host of [0, 1]) {
    const { vms } = await c.client(c.agents[host]).request<{ vms: { name: string; observed: { state: string; incoming?: string } }[] }>("GET", "/v1/vms");
    for (const v of vms) {
      const want = declared.get(v.name);
      if (!want) await c.client(c.agents[host]).deleteVm(v.name);
      else if (want.host !== host) {
        // Declared elsewhere: move it if it runs here, else drop this copy (the PUT below starts it there).
        if (v.observed.state === "running" && !v.observed.incoming) await moveVm(c.client(c.agents[host]), c.client(c.agents[want.host]), v.name, want.spec);
        else await c.client(c.agents[host]).deleteVm(v.name);
      }
    }
  }
  for (const [name, want] of declared) await c.client(c.agents[want.host]).putVm(name, want.spec);
}

test(`${KILLS} SIGKILLs at random points of create, update, migrate and delete: one QEMU per declared VM after each`, async () => {
  const seed = Number(process.env.FAULT_SEED ?? Date.now() % 100000);
  const random = rng(seed);
  const declared: Declared = new Map();
  const specs = (name: string, variant: number) => vmSpec(c, name, { env: jobEnv("stay-up"), memoryMiB: variant ? 144 : 128 });
  const ops = { create: 0, update: 0, migrate: 0, delete: 0 };
  const failures: string[] = [];
  let survived = 0;
  for (let i = 0; i < KILLS; i++) {
    const names = [...declared.keys()];
    const pick = () => names[Math.floor(random() * names.length)];
    const r = random();
    const op = names.length === 0 || (r < 0.3 && names.length < 3) ? "create" : r < 0.55 ? "update" : r < 0.8 ? "migrate" : "delete";
    ops[op]++;
    let request: Promise<unknown>;
    let victims: number[];
    if (op === "create") {
      const name = `vm-${i}`;
      const host = Math.floor(random() * 2);
      declared.set(name, { host, spec: specs(name, 0) });
      request = c.client(c.agents[host]).putVm(name, declared.get(name)!.spec);
      victims = [host];
    } else if (op === "update") {
      const name = pick();
      const d = declared.get(name)!;
      const variant = d.spec.config.includes("-m 144M") ? 0 : 1;
      declared.set(name, { host: d.host, spec: specs(name, variant) });
      request = c.client(c.agents[d.host]).putVm(name, declared.get(name)!.spec);
      victims = [d.host];
    } else if (op === "migrate") {
      const name = pick();
      const d = declared.get(name)!;
      const to = 1 - d.host;
      declared.set(name, { host: to, spec: d.spec });
      request = moveVm(c.client(c.agents[d.host]), c.client(c.agents[to]), name, d.spec);
      // The source, the target, or both die.
      const w = random();
      victims = w < 0.4 ? [d.host] : w < 0.8 ? [to] : [d.host, to];
    } else {
      const name = pick();
      const d = declared.get(name)!;
      declared.delete(name);
      request = c.client(c.agents[d.host]).deleteVm(name);
      victims = [d.host];
    }
    const settled = request.then(
      () => "done",
      (err: Error) => `failed: ${err.message}`,
    );
    await new Promise((r) => setTimeout(r, Math.floor(random() * 900)));
    for (const h of victims) await killAgent(h);
    await settled;
    for (const h of victims) await c.start(h);
    try {
      await reconcile(declared);
      const running = qemus();
      const expected = [...declared].map(([name, d]) => `${name}@${d.host}`).sort();
      const actual = running.map((q) => `${q.name}@${q.host}`).sort();
      if (JSON.stringify(actual) !== JSON.stringify(expected)) throw new Error(`expected ${expected.join(" ")}, found ${actual.join(" ")}`);
      survived++;
    } catch (err) {
      failures.push(`kill ${i} (${op}, seed ${seed}): ${(err as Error).message}`);
      // Start the next round from a known state: whatever the agents hold, made to match.
      await reconcile(declared).catch(() => undefined);
    }
  }
  console.log(`fault injection: ${survived}/${KILLS} kills survived (${JSON.stringify(ops)}, seed ${seed})`);
  expect(failures).toEqual([]);
  expect(survived).toBe(KILLS);
});
