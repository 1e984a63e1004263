// `vse accounting` against a real agent with a real QEMU job: the stack's state
// (here the records a stack export holds for one cluster) names the agents, each
// is asked for its records; table, JSON and CSV all carry them, the scheduler's
// job id comes from the cluster's allocation info, and an agent that does not
// answer is reported with exit code 1.
import * as os from "os";
import { schedulerJobId } from "../../provider/agent/accounting";
import { ACCOUNTING_COLUMNS, AccountingResult, AccountingStackState, runAccounting } from "../../provider/cli/accounting";
import { main } from "../../provider/cli/vse";
import { jobEnv, testCluster, TestCluster, vmSpec, waitForVm } from "../support/agent";
import { processesUnder } from "../support/stack";

jest.setTimeout(5 * 60 * 1000);

let c: TestCluster;

beforeAll(async () => {
  c = await testCluster();
  await c.start(0);
  const client = c.client();
  await client.putVm("c-0", vmSpec(c, "c-0", { env: jobEnv("power-off"), memoryMiB: 128, vcpus: 1 }));
  await waitForVm(client, "c-0", (v) => v.observed.state === "exited", 240000);
});

afterAll(async () => {
  const dir = c.dir;
  await c.stop();
  expect(processesUnder(dir)).toEqual([]);
});

function state(extraAgents: { host: number; url: string }[] = []): AccountingStackState {
  return {
    clusters: [
      {
        name: "c",
        clusterKey: c.key,
        token: c.launch.token,
        agents: [
          { host: 0, url: c.agents[0].url, pid: c.agents[0].pid, stateDir: c.agents[0].stateDir },
          ...extraAgents.map((a) => ({ ...a, pid: null, stateDir: "" })),
        ],
      },
    ],
    vms: [{ name: "c-0", cluster: "c", host: 0, hypervisor: "qemu", launch: "cold", status: "completed" }],
    extra: { c: { ca: null, info: { slurmJobId: "4711" } } },
  };
}

async function run(format: "table" | "json" | "csv", extraAgents: { host: number; url: string }[] = []): Promise<{ code: number; out: string }> {
  let out = "";
  const code = await runAccounting({ stack: "t", format, workDir: c.dir, env: {} }, (t) => (out += t), { read: async () => state(extraAgents) });
  return { code, out };
}

const JOB = schedulerJobId(process.env) ?? "4711";

test("JSON: one record per VM process, on its host, under the cluster's job", async () => {
  const { code, out } = await run("json");
  expect(code).toBe(0);
  const r = JSON.parse(out) as AccountingResult;
  expect(r.unreachable).toEqual([]);
  expect(r.rows).toHaveLength(1);
  const row = r.rows[0];
  expect(row).toEqual(
    expect.objectContaining({
      cluster: "c",
      vm: "c-0",
      host: 0,
      hostname: os.hostname(),
      agent: c.agents[0].url,
      schedulerJobId: JOB,
      state: "ended",
      memoryMiB: 128,
      vcpus: 1,
    }),
  );
  expect(row.cpuSeconds).toBeGreaterThan(0);
  expect(row.cpuSeconds).toBeLessThanOrEqual(row.wallSeconds * row.vcpus!);
  expect(row.peakRssMiB).toBeGreaterThan(8);
});

test("CSV: the header is the columns, every row has them all, numbers parse", async () => {
  const { code, out } = await run("csv");
  expect(code).toBe(0);
  const lines = out.trimEnd().split("\n");
  expect(lines[0]).toBe(ACCOUNTING_COLUMNS.join(","));
  expect(lines).toHaveLength(2);
  const cells = lines[1].split(",");
  expect(cells).toHaveLength(ACCOUNTING_COLUMNS.length);
  const row = Object.fromEntries(ACCOUNTING_COLUMNS.map((k, i) => [k, cells[i]]));
  expect(row).toEqual(expect.objectContaining({ cluster: "c", vm: "c-0", host: "0", schedulerJobId: JOB, state: "ended", vcpus: "1", memoryMiB: "128" }));
  for (const k of ["wallSeconds", "cpuSeconds", "peakRssMiB", "pid"]) expect(Number.isFinite(Number(row[k])) && row[k] !== "").toBe(true);
  expect(Number(row.cpuSeconds)).toBeGreaterThan(0);
});

test("table: a header and a row, column by column", async () => {
  const { code, out } = await run("table");
  expect(code).toBe(0);
  const lines = out.trimEnd().split("\n");
  const header = lines[0].split(/ {2,}/);
  expect(header).toEqual(["CLUSTER", "VM", "HOST", "HOSTNAME", "JOB", "PID", "STATE", "WALL s", "CPU s", "VCPUS", "MEM MiB", "PEAK RSS MiB", "STARTED"]);
  expect(lines).toHaveLength(2);
  const cells = lines[1].split(/ {2,}/);
  expect(cells).toHaveLength(header.length);
  expect(cells.slice(0, 5)).toEqual(["c", "c-0", "0", os.hostname(), JOB]);
  expect(cells[6]).toBe("ended");
  expect(Number(cells[8])).toBeGreaterThan(0);
  // Columns line up: each cell starts where its header does.
  for (const h of ["VM", "HOSTNAME", "CPU s", "STARTED"]) expect(lines[1][lines[0].indexOf(h) - 1]).toBe(" ");
});

test("an agent that does not answer is reported and makes the exit code 1; the others' figures are shown", async () => {
  const { code, out } = await run("table", [{ host: 1, url: `unix:${c.dir}/no-such-agent.sock` }]);
  expect(code).toBe(1);
  expect(out).toMatch(/c-0/);
  expect(out).toMatch(new RegExp(`agent of cluster c host 1 \\(unix:${c.dir}/no-such-agent.sock\\) did not answer: `));
});

test("vse accounting refuses a format it does not write", async () => {
  let err = "";
  const code = await main(["accounting", "--format", "xml"], { stdout: () => undefined, stderr: (t) => (err += t) });
  expect(code).toBe(2);
  expect(err).toMatch(/--format must be one of table, json, csv, not "xml"/);
});

test("vse checkpoint: a subcommand it does not know, or the wrong arguments, are usage errors", async () => {
  for (const [argv, msg] of [
    [["checkpoint", "frob"], /checkpoint: expected save, list or restore, found "frob"/],
    [["checkpoint", "save"], /checkpoint save: expected <vm>/],
    [["checkpoint", "restore", "abc"], /checkpoint restore: expected <checkpoint id> <vm>/],
    [["checkpoint", "save", "c-0", "--host", "1"], /--host: expected a host index \(0-63\), with restore only/],
  ] as [string[], RegExp][]) {
    let err = "";
    expect(await main(argv, { stdout: () => undefined, stderr: (t) => (err += t) })).toBe(2);
    expect(err).toMatch(msg);
  }
});
