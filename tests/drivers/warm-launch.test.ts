// Warm launch through a real node agent and QEMU: the first VM of a warm
// environment boots cold and leaves a snapshot at its ready point; later VMs
// restore it, are handed their own name, MAC and job (argv and environment:
// one snapshot serves any job of the environment), print the same job result
// as a cold boot, reach each other on the cluster network, and a changed
// environment never restores an old snapshot.
import * as fs from "fs";
import * as path from "path";
import type { EnvironmentModel } from "../../provider/model/resolve";
import { useTestCluster, TestCluster, vmSpec, waitForVm } from "../support/agent";
import { processEnded } from "../support/stack";

jest.setTimeout(10 * 60 * 1000);

const cluster = useTestCluster([0]);
let c: TestCluster;
beforeAll(() => (c = cluster()));

const env = (command: string): EnvironmentModel => ({
  name: "warm",
  base: "busybox",
  warm: true,
  kernelArgs: [],
  job: { command: ["/bin/sh", "-c", command], env: {}, afterJob: "stay-up", timeoutSeconds: 120 },
});

const snapshots = () => (fs.existsSync(path.join(c.cacheDir, "snapshots")) ? fs.readdirSync(path.join(c.cacheDir, "snapshots")) : []);

async function launch(name: string, e: EnvironmentModel, opts: { network?: boolean; index?: number } = {}) {
  const t0 = Date.now();
  await c.client().putVm(name, vmSpec(c, name, { env: e, ...opts }));
  const v = await waitForVm(c.client(), name, (x) => x.job.state === "done");
  return { output: v.job.output, launch: v.observed.launch, seconds: (Date.now() - t0) / 1000 };
}

test("a warm VM restored from a snapshot prints what a cold boot prints; a changed environment boots cold again", async () => {
  const sum = env("echo $((2+3)) on $(hostname)");
  const cold = await launch("sum-a", sum);
  expect(cold).toEqual(expect.objectContaining({ output: "5 on sum-a\n", launch: "cold" }));
  expect(snapshots()).toHaveLength(1);
  const warm = await launch("sum-b", sum);
  expect(warm).toEqual(expect.objectContaining({ output: "5 on sum-b\n", launch: "warm" }));
  console.log(`job output after the request: cold ${cold.seconds.toFixed(2)} s, warm ${warm.seconds.toFixed(2)} s`);
  expect(warm.seconds).toBeLessThan(cold.seconds);
  // Another job is the same image: the snapshot serves it, and the job is the one handed over.
  const other = await launch("sum-c", env("echo $((2*3)) on $(hostname)"));
  expect(other).toEqual(expect.objectContaining({ output: "6 on sum-c\n", launch: "warm" }));
  expect(snapshots()).toHaveLength(1);
  // A changed environment (here what follows the job) is another image: it boots cold and leaves a snapshot of its own.
  const changed = await launch("sum-d", { ...sum, job: { ...sum.job, afterJob: "power-off" } });
  expect(changed).toEqual(expect.objectContaining({ output: "5 on sum-d\n", launch: "cold" }));
  expect(snapshots()).toHaveLength(2);
  for (const n of ["sum-a", "sum-b", "sum-c", "sum-d"]) await c.client().deleteVm(n);
});

test("a restored guest runs the argv and environment it is handed, byte for byte", async () => {
  // Spaces, quotes, a $ that must not expand, an empty argument, a trailing newline, UTF-8.
  const args = ["two words", 'it\'s "quoted"', "$HOME", "", "line\n", "grüße"];
  const e: EnvironmentModel = {
    ...env("unused"),
    job: {
      command: ["/bin/sh", "-c", 'for a in "$@"; do printf "[%s]" "$a"; done; echo; echo "greeting=$GREETING"', "sh", ...args],
      env: { GREETING: "hello  $USER `x`" },
      afterJob: "stay-up",
      timeoutSeconds: 120,
    },
  };
  // Boots cold first if no snapshot of this image is there yet, then a second VM is restored: both get the same job.
  const first = await launch("argv-a", e);
  const second = await launch("argv-b", e);
  const want = `${args.map((a) => `[${a}]`).join("")}\ngreeting=hello  $USER \`x\`\n`;
  expect(first.output).toBe(want);
  expect(second).toEqual(expect.objectContaining({ output: want, launch: "warm" }));
  for (const n of ["argv-a", "argv-b"]) await c.client().deleteVm(n);
});

test("the agent refuses a warm VM without its job, and a job it cannot hand over", async () => {
  const spec = vmSpec(c, "nojob", { env: env("true") });
  // Without its job (undefined is not sent).
  await expect(c.client().putVm("nojob", { ...spec, job: undefined })).rejects.toThrow(
    /warm image: its job \(spec\.job\) is handed to the guest after the restore, and none was given/,
  );
  await expect(c.client().putVm("nojob", { ...spec, job: { command: [], env: {} } })).rejects.toThrow(/job\.command: expected 1 to 256 strings/);
  await expect(c.client().putVm("nojob", { ...spec, job: { command: ["true"], env: { "BAD-NAME": "x" } } })).rejects.toThrow(/is not a variable name/);
  await expect(c.client().putVm("nojob", { ...spec, job: { command: ["a\u0000b"], env: {} } })).rejects.toThrow(/NUL is not allowed/);
  expect(await c.client().getVm("nojob")).toBeUndefined();
});

test("an agent killed before it handed a booting warm guest its job: the restarted agent hands it over, and the job runs once", async () => {
  // No snapshot: the guest boots to its ready point, which takes seconds; the agent is killed as soon as QEMU runs.
  fs.rmSync(path.join(c.cacheDir, "snapshots"), { recursive: true, force: true });
  const e = env("echo handed $((4+4)) to $(hostname)");
  const first = c.agents[0];
  const v0 = await c.client().putVm("late", vmSpec(c, "late", { env: e }));
  process.kill(first.pid, "SIGKILL");
  while (!processEnded(first.pid)) await new Promise((r) => setTimeout(r, 20));
  const qemu = v0.observed.pid!;
  expect(fs.existsSync(`/proc/${qemu}`)).toBe(true);

  await c.start(0);
  const v = await waitForVm(c.client(), "late", (x) => x.job.state === "done");
  expect(v.job.output).toBe("handed 8 to late\n");
  expect(v.observed).toEqual(expect.objectContaining({ pid: qemu, starts: 1 }));
  // The restarted agent also saved the snapshot the first one would have.
  expect(snapshots()).toHaveLength(1);
  await c.client().deleteVm("late");
});

test("VMs restored from one snapshot have their own names, MACs and addresses, and reach each other", async () => {
  const job = [
    'echo "name=$(hostname) mac=$(cat /sys/class/net/eth0/address) ip=$(ip -4 -o addr show dev eth0 | sed "s/.* inet \\([^ ]*\\).*/\\1/")"',
    '[ "$(hostname)" = net-1 ] && exit 0',
    'for peer in 10.77.0.3 10.77.0.4; do n=0; until ping -c1 -W1 $peer >/dev/null 2>&1; do n=$((n+1)); [ $n -ge 60 ] && break; done; [ $n -lt 60 ] && echo "reach $peer"; done',
  ].join("\n");
  const e = env(job);
  const first = await launch("net-1", e, { network: true, index: 1 });
  expect(first.launch).toBe("cold");
  const specs = [2, 3].map((i) => vmSpec(c, `net-${i}`, { env: e, network: true, index: i }));
  await Promise.all([2, 3].map((i, k) => c.client().putVm(`net-${i}`, specs[k])));
  const views = await Promise.all([2, 3].map((i) => waitForVm(c.client(), `net-${i}`, (x) => x.job.state === "done")));
  const macs = specs.map((s) => /mac=([0-9a-f:]+)/.exec(s.config)![1]);
  views.forEach((v, k) => {
    expect(v.observed.launch).toBe("warm");
    expect(v.job.output).toBe(`name=net-${k + 2} mac=${macs[k]} ip=10.77.0.${k + 3}/16\nreach 10.77.0.3\nreach 10.77.0.4\n`);
  });
  expect(new Set(macs).size).toBe(2);
  for (const n of ["net-1", "net-2", "net-3"]) await c.client().deleteVm(n);
});
