// Fault injection through the real engine: while `pulumi up` restarts or
// migrates a VM, one of the cluster's agents is SIGKILLed at a random moment.
// Then one `pulumi up --refresh` (which restarts the dead agent, re-attaches
// its VMs and finishes the change) leaves exactly one QEMU per declared VM, on
// its declared host, and a preview after it shows no changes.
// tests/agent/fault-injection.test.ts does the same at 110 kill points below
// the engine; this file checks that the engine path recovers the same way.
import * as fs from "fs";
import * as path from "path";
import { createTestStack, processesUnder, TestStack, upAndCheckNoDiff } from "../support/stack";

jest.setTimeout(20 * 60 * 1000);

const ROUNDS = Number(process.env.ENGINE_FAULT_ROUNDS ?? 4);

const defs = (overrides: string) => `apiVersion: vse.dev/v1
kind: Environment
metadata: { name: ticker }
spec:
  job: { command: ["/bin/sh", "-c", "echo up"], afterJob: stay-up, timeoutSeconds: 120 }
---
apiVersion: vse.dev/v1
kind: VmProfile
metadata: { name: small }
spec: { memory: 128MiB, vcpus: 1, accel: tcg }
---
apiVersion: vse.dev/v1
kind: VirtualCluster
metadata: { name: fk }
spec:
  environment: ticker
  profile: small
  nodes: 2
  allocation: { manager: local, hosts: 2 }
  overrides: ${overrides}
`;

let t: TestStack;

beforeAll(async () => {
  t = await createTestStack({ "cluster.yaml": defs("[]") });
});

afterAll(async () => {
  await t.cleanup();
  expect(processesUnder(t.dir)).toEqual([]);
});

/** QEMU processes of the stack as "<vm>@<host>". */
function qemus(): string[] {
  return processesUnder(t.stateRoot)
    .filter((p) => path.basename(p.argv[0]).startsWith("qemu-system"))
    .map((p) => `${p.argv[p.argv.indexOf("-name") + 1]}@${/host-(\d+)/.exec(p.argv[p.argv.indexOf("-pidfile") + 1])?.[1]}`)
    .sort();
}

test(`${ROUNDS} agents killed during pulumi up; one up --refresh after each leaves one QEMU per declared VM`, async () => {
  await upAndCheckNoDiff(t.stack);
  expect(qemus()).toEqual(["fk-0@0", "fk-1@1"]);
  // Each round changes one VM: a restart (memory) or a migration (host), alternating.
  const placements = [0, 1];
  const log: string[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const vm = round % 2;
    const migrate = round % 4 >= 2;
    if (migrate) placements[vm] = 1 - placements[vm];
    const overrides = [0, 1].map((i) => `{ vm: ${i}, host: ${placements[i]}${i === vm && !migrate ? `, memory: ${round % 2 ? 160 : 144}MiB` : ""} }`);
    fs.writeFileSync(path.join(t.defsDir, "cluster.yaml"), defs(`[${overrides.join(", ")}]`));
    const victim = Math.floor(Math.random() * 2);
    const delayMs = 2000 + Math.floor(Math.random() * 5000);
    const up = t.stack.up().then(
      () => "up succeeded",
      (e: Error) => `up failed: ${e.message.split("\n").find((l) => /error:/.test(l)) ?? "?"}`,
    );
    await new Promise((r) => setTimeout(r, delayMs));
    const info = JSON.parse(fs.readFileSync(path.join(t.hostDir("fk", victim), "agent.json"), "utf8")) as { pid: number };
    process.kill(info.pid, "SIGKILL");
    const outcome = await up;
    log.push(`round ${round}: ${migrate ? "migrate" : "restart"} fk-${vm}, agent ${victim} killed after ${delayMs} ms, ${outcome}`);
    await upAndCheckNoDiff(t.stack, { refresh: true });
    expect({ round, qemus: qemus() }).toEqual({ round, qemus: [`fk-0@${placements[0]}`, `fk-1@${placements[1]}`].sort() });
  }
  console.log(log.join("\n"));
});
