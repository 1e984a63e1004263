// Namespace hosts (provider/allocation/netns.ts): three hosts on a bridge,
// each with its own address in a private test subnet and no route beyond it;
// set-up repairs what is half-made; tc caps a link; tear-down, run twice,
// leaves no namespace, link or process behind. Needs root (iproute2, tc).
import * as net from "net";
import {
  capHostLink,
  listLinks,
  listNetns,
  netnsExec,
  netnsLeftovers,
  netnsPids,
  NetnsHosts,
  planNetnsHosts,
  setUpNetnsHosts,
  tearDownNetnsHosts,
} from "../../provider/allocation/netns";

jest.setTimeout(60 * 1000);

// Only addresses in this subnet (and 127.0.0.0/8) are ever used.
const SUBNET = "10.213.0.0/26";
// A fixed tag with its own subnet: whatever a killed earlier run left behind under it is torn down first.
const TAG = "tnet";
let hosts: NetnsHosts;
const started: number[] = [];

async function run(file: string, args: string[]): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const execa = require("execa") as typeof import("execa");
  const r = await execa(file, args, { reject: false, stdin: "ignore", timeout: 30000 });
  return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

beforeAll(async () => {
  await tearDownNetnsHosts(TAG);
  hosts = await setUpNetnsHosts({ tag: TAG, count: 3, subnet: SUBNET });
});

afterAll(async () => {
  await tearDownNetnsHosts(TAG);
  expect(await netnsLeftovers(TAG)).toEqual({ netns: [], links: [] });
});

test("names and addresses are checked and planned before anything is touched", () => {
  expect(() => planNetnsHosts({ tag: "Bad;rm", count: 1, subnet: SUBNET })).toThrow(/tag/);
  expect(() => planNetnsHosts({ tag: "ok", count: 1, subnet: "8.8.8.0/24" })).toThrow(/private/);
  expect(() => planNetnsHosts({ tag: "ok", count: 1, subnet: "10.213.0.5/24" })).toThrow(/network address/);
  expect(() => planNetnsHosts({ tag: "ok", count: 6, subnet: "10.213.0.0/29" })).toThrow(/holds 5 hosts/);
  expect(() => netnsExec("vse-x-h0; reboot", ["true"])).toThrow(/netns/);
  const p = planNetnsHosts({ tag: "ab12", count: 2, subnet: "10.213.0.0/24" });
  expect(p.gateway).toBe("10.213.0.1");
  expect(p.hosts.map((h) => [h.netns, h.address, h.link])).toEqual([
    ["vse-ab12-h0", "10.213.0.2", "vse-ab12-v0"],
    ["vse-ab12-h1", "10.213.0.3", "vse-ab12-v1"],
  ]);
});

test("three hosts: each its namespace, loopback up, its own address, reachable from here and from each other, no route beyond the subnet", async () => {
  const all = await listNetns();
  for (const h of hosts.hosts) {
    expect(all).toContain(h.netns);
    const lo = await run("ip", ["-n", h.netns, "-o", "link", "show", "lo"]);
    expect(lo.stdout).toMatch(/[<,]UP[,>]/);
    const addr = await run("ip", ["-n", h.netns, "-o", "-4", "addr", "show", "dev", "eth0"]);
    expect(addr.stdout).toContain(`inet ${h.address}/26`);
    const routes = await run("ip", ["-n", h.netns, "-4", "route", "show"]);
    expect(routes.stdout.trim()).toBe(`10.213.0.0/26 dev eth0 proto kernel scope link src ${h.address}`);
    expect((await run("ping", ["-c", "1", "-W", "2", h.address])).exitCode).toBe(0);
  }
  const a = hosts.hosts[0];
  const b = hosts.hosts[2];
  const cmd = netnsExec(a.netns, ["ping", "-c", "1", "-W", "2", b.address]);
  expect((await run(cmd.file, cmd.args)).exitCode).toBe(0);
  // A host's loopback is its own: 127.0.0.1 inside a namespace is not this machine's.
  const lo = netnsExec(a.netns, ["ping", "-c", "1", "-W", "2", "127.0.0.1"]);
  expect((await run(lo.file, lo.args)).exitCode).toBe(0);
});

test("set-up is idempotent and repairs a half-made host", async () => {
  const before = (await listLinks()).filter((l) => l.startsWith(`vse-${TAG}-`)).sort();
  expect(await setUpNetnsHosts({ tag: TAG, count: 3, subnet: SUBNET })).toEqual(hosts);
  expect((await listLinks()).filter((l) => l.startsWith(`vse-${TAG}-`)).sort()).toEqual(before);
  // Break host 1: its link goes (and with it the host's eth0).
  expect((await run("ip", ["link", "del", hosts.hosts[1].link])).exitCode).toBe(0);
  expect((await run("ping", ["-c", "1", "-W", "1", hosts.hosts[1].address])).exitCode).not.toBe(0);
  await setUpNetnsHosts({ tag: TAG, count: 3, subnet: SUBNET });
  expect((await run("ping", ["-c", "1", "-W", "2", hosts.hosts[1].address])).exitCode).toBe(0);
});

/** Sends bytes to a sink on the host and resolves with the milliseconds until the sink has them all. */
async function sendTime(address: string, netns: string, bytes: number): Promise<number> {
  const execa = require("execa") as typeof import("execa");
  const port = 7000 + Math.floor(Math.random() * 1000);
  const code = `const n=require("net");let c=0;const s=n.createServer((k)=>{k.on("data",(d)=>{c+=d.length;if(c>=${bytes}){k.end("done");s.close();}});});s.listen(${port},"${address}",()=>console.log("ready"));`;
  const cmd = netnsExec(netns, [process.execPath, "-e", code]);
  const sink = execa(cmd.file, cmd.args, { reject: false, timeout: 30000 });
  started.push(sink.pid!);
  await new Promise<void>((resolve) => sink.stdout!.on("data", (d: Buffer) => d.toString().includes("ready") && resolve()));
  const t0 = Date.now();
  await new Promise<void>((resolve, reject) => {
    const sock = net.connect(port, address, () => sock.write(Buffer.alloc(bytes)));
    sock.on("data", (d) => d.toString().includes("done") && resolve());
    sock.on("error", reject);
  });
  const ms = Date.now() - t0;
  await sink;
  return ms;
}

test("tc caps a host's link; removing the cap restores it", async () => {
  const capped = hosts.hosts[2];
  const free = hosts.hosts[1];
  await capHostLink(hosts, capped.index, "2mbit");
  await capHostLink(hosts, capped.index, "2mbit"); // idempotent
  expect((await run("tc", ["qdisc", "show", "dev", capped.link])).stdout).toMatch(/tbf .*rate 2Mbit/);
  expect((await run("tc", ["-n", capped.netns, "qdisc", "show", "dev", "eth0"])).stdout).toMatch(/tbf .*rate 2Mbit/);
  const bytes = 384 * 1024; // 1.5 s at 2 Mbit/s
  const slow = await sendTime(capped.address, capped.netns, bytes);
  const fast = await sendTime(free.address, free.netns, bytes);
  expect(slow).toBeGreaterThan(1100);
  expect(fast).toBeLessThan(slow / 3);
  await capHostLink(hosts, capped.index, undefined);
  expect((await run("tc", ["qdisc", "show", "dev", capped.link])).stdout).not.toMatch(/tbf/);
  await expect(capHostLink(hosts, 0, "fast; reboot")).rejects.toThrow(/bandwidth/);
});

test("tear-down ends the processes inside, leaves no namespace or link behind, and may run again", async () => {
  const execa = require("execa") as typeof import("execa");
  const sleepers = hosts.hosts.map((h) => {
    const cmd = netnsExec(h.netns, ["sleep", "600"]);
    const p = execa(cmd.file, cmd.args, { reject: false, detached: true, stdin: "ignore" });
    p.catch(() => undefined);
    started.push(p.pid!);
    return p.pid!;
  });
  await new Promise((r) => setTimeout(r, 200));
  expect(await netnsPids(hosts.hosts[0].netns)).toContain(sleepers[0]);
  await tearDownNetnsHosts(TAG);
  await tearDownNetnsHosts(TAG);
  expect(await netnsLeftovers(TAG)).toEqual({ netns: [], links: [] });
  const links = (await run("ip", ["-o", "link", "show"])).stdout;
  expect(links).not.toContain(`vse-${TAG}-`);
  await new Promise((r) => setTimeout(r, 100)); // the reaper
  for (const pid of started) expect(alive(pid)).toBe(false);
  expect((await run("ip", ["-4", "route", "show"])).stdout).not.toContain(SUBNET);
});
