// Warm launch through a real node agent and QEMU: the first VM of a warm
// environment boots cold and leaves a snapshot at its ready point; later VMs
// restore it, are handed their own name and MAC, print the same job result as
// a cold boot, reach each other on the cluster network, and a changed
// environment never restores an old snapshot.
import * as fs from "fs";
import * as path from "path";
import type { EnvironmentModel } from "../../provider/model/resolve";
import { useTestCluster, TestCluster, vmSpec, waitForVm } from "../support/agent";

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
  // Another job is another image: its snapshot is not the old one.
  const other = await launch("sum-c", env("echo $((2*3)) on $(hostname)"));
  expect(other).toEqual(expect.objectContaining({ output: "6 on sum-c\n", launch: "cold" }));
  expect(snapshots()).toHaveLength(2);
  for (const n of ["sum-a", "sum-b", "sum-c"]) await c.client().deleteVm(n);
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
