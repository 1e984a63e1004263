// Hosts as Linux network namespaces, for tests and for a multi-host demo on
// one machine (issue 9). Each host is a namespace `vse-<tag>-h<i>` with its
// loopback up and one veth link (eth0 inside, `vse-<tag>-v<i>` outside) on a
// bridge `vse-<tag>-br` in the root namespace; the bridge holds the subnet's
// first address, host i the (i+2)th. The namespaces get no default route: a
// host reaches its subnet and nothing else. `tc tbf` can cap a host's link in
// both directions. Set-up and tear-down are idempotent; tear-down ends every
// process inside the namespaces (`ip netns pids`), then removes the
// namespaces, links and bridge. Every command is an argument array (execa,
// never a shell), every name and value is checked first. Needs root (or
// CAP_NET_ADMIN and CAP_SYS_ADMIN).
//
// Running a process on a host: `ip netns exec <namespace> <argv…>` (netnsExec).
// The namespaces share this machine's filesystem and process IDs, so paths
// (image stores, state directories) and /proc mean the same in all of them.

/** A run-specific tag: 1 to 6 lowercase letters or digits, so every link name stays within Linux's 15 characters. */
export const NETNS_TAG_PATTERN = /^[a-z0-9]{1,6}$/;
const NETNS_NAME_PATTERN = /^vse-[a-z0-9]{1,6}-h[0-9]{1,3}$/;
/** A tc rate: a whole number of kbit, mbit or gbit per second. */
export const RATE_PATTERN = /^([1-9][0-9]{0,5})(kbit|mbit|gbit)$/;
export const MAX_NETNS_HOSTS = 200;

export interface NetnsHostsOptions {
  /** Run-specific tag in every name (NETNS_TAG_PATTERN). */
  tag: string;
  /** How many hosts (1 to 200, and at most what the subnet holds). */
  count: number;
  /** A private IPv4 subnet of prefix length /16 to /29, e.g. 10.213.0.0/24; nothing outside it is ever addressed. */
  subnet: string;
  /** tc tbf rates by host index, e.g. { 2: "8mbit" }: caps that host's link both ways. */
  bandwidth?: Record<number, string>;
}

export interface NetnsHost {
  index: number;
  /** The namespace: vse-<tag>-h<index>. */
  netns: string;
  address: string;
  /** The veth end in the root namespace (on the bridge). */
  link: string;
}

export interface NetnsHosts {
  tag: string;
  subnet: string;
  prefixLength: number;
  bridge: string;
  /** The bridge's address in the root namespace: how this machine reaches the hosts. */
  gateway: string;
  hosts: NetnsHost[];
}

function check(ok: boolean, msg: string): void {
  if (!ok) throw new Error(msg);
}

export function ipv4ToInt(a: string): number {
  const m = /^(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})$/.exec(a);
  if (!m || m.slice(1).some((o) => Number(o) > 255)) throw new Error(`expected an IPv4 address (a.b.c.d), found ${JSON.stringify(a)}`);
  return m
    .slice(1)
    .map(Number)
    .reduce((n, o) => n * 256 + o, 0);
}

export function intToIpv4(n: number): string {
  return [24, 16, 8, 0].map((s) => (n >>> s) & 255).join(".");
}

/** Parses a private subnet a.b.c.d/len (RFC 1918, /16 to /29, given by its network address). */
export function parseSubnet(subnet: string): { network: number; prefixLength: number; size: number } {
  const m = /^([0-9.]{7,15})\/([0-9]{1,2})$/.exec(subnet);
  check(!!m, `subnet: expected a.b.c.d/len, found ${JSON.stringify(subnet)}`);
  const network = ipv4ToInt(m![1]);
  const prefixLength = Number(m![2]);
  check(prefixLength >= 16 && prefixLength <= 29, `subnet ${subnet}: expected a prefix length from 16 to 29`);
  const size = 2 ** (32 - prefixLength);
  check(network % size === 0, `subnet ${subnet}: ${m![1]} is not the network address of a /${prefixLength}`);
  const inside = (base: string, len: number) => Math.floor(network / 2 ** (32 - len)) === Math.floor(ipv4ToInt(base) / 2 ** (32 - len));
  check(
    (inside("10.0.0.0", 8) && prefixLength >= 8) || (inside("172.16.0.0", 12) && prefixLength >= 12) || (inside("192.168.0.0", 16) && prefixLength >= 16),
    `subnet ${subnet}: expected a private (RFC 1918) subnet`,
  );
  return { network, prefixLength, size };
}

/** The plan for a set of hosts: names and addresses, without touching the system. */
export function planNetnsHosts(o: Pick<NetnsHostsOptions, "tag" | "count" | "subnet">): NetnsHosts {
  check(NETNS_TAG_PATTERN.test(o.tag), `tag: expected 1 to 6 lowercase letters or digits, found ${JSON.stringify(o.tag)}`);
  const { network, prefixLength, size } = parseSubnet(o.subnet);
  check(Number.isInteger(o.count) && o.count >= 1 && o.count <= MAX_NETNS_HOSTS, `count: expected 1 to ${MAX_NETNS_HOSTS}, found ${o.count}`);
  check(o.count + 3 <= size, `subnet ${o.subnet} holds ${size - 3} hosts, ${o.count} asked for`);
  const hosts = Array.from({ length: o.count }, (_, index) => ({
    index,
    netns: `vse-${o.tag}-h${index}`,
    address: intToIpv4(network + 2 + index),
    link: `vse-${o.tag}-v${index}`,
  }));
  return { tag: o.tag, subnet: o.subnet, prefixLength, bridge: `vse-${o.tag}-br`, gateway: intToIpv4(network + 1), hosts };
}

async function run(file: "ip" | "tc" | "kill", args: string[], opts: { allowFail?: boolean } = {}): Promise<{ ok: boolean; stdout: string; stderr: string }> {
  const execa = require("execa") as typeof import("execa");
  const r = await execa(file, args, { reject: false, stdin: "ignore", timeout: 30000 });
  const ok = r.exitCode === 0;
  if (!ok && !opts.allowFail) throw new Error(`${file} ${args.join(" ")}: ${(r.stderr || r.stdout || `exit ${r.exitCode}`).trim()}`);
  return { ok, stdout: r.stdout, stderr: r.stderr };
}

/** Every network namespace's name (`ip netns list`). */
export async function listNetns(): Promise<string[]> {
  const r = await run("ip", ["netns", "list"]);
  return r.stdout
    .split("\n")
    .map((l) => l.trim().split(/\s+/)[0])
    .filter(Boolean);
}

/** Every link name in the root namespace (`ip -o link show`). */
export async function listLinks(): Promise<string[]> {
  const r = await run("ip", ["-o", "link", "show"]);
  return r.stdout
    .split("\n")
    .map((l) => /^[0-9]+: ([^:@ ]+)/.exec(l)?.[1])
    .filter((n): n is string => !!n);
}

/** The processes inside a namespace (`ip netns pids`). */
export async function netnsPids(netns: string): Promise<number[]> {
  check(NETNS_NAME_PATTERN.test(netns), `netns: expected vse-<tag>-h<n>, found ${JSON.stringify(netns)}`);
  const r = await run("ip", ["netns", "pids", netns], { allowFail: true });
  return r.stdout
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => /^[0-9]+$/.test(l))
    .map(Number);
}

/** The argument array that runs argv on a namespace host: ip netns exec <netns> argv… */
export function netnsExec(netns: string, argv: string[]): { file: "ip"; args: string[] } {
  check(NETNS_NAME_PATTERN.test(netns), `netns: expected vse-<tag>-h<n>, found ${JSON.stringify(netns)}`);
  check(argv.length > 0 && argv.every((a) => typeof a === "string" && !a.includes("\0")), "argv: expected a non-empty list of strings");
  return { file: "ip", args: ["netns", "exec", netns, ...argv] };
}

/** tc tbf parameters for a rate: burst at least one 10 ms slice of the rate (and 16 KiB), a 100 ms queue. */
function tbfArgs(rate: string): string[] {
  const m = RATE_PATTERN.exec(rate);
  check(!!m, `bandwidth: expected a rate like 8mbit (kbit, mbit or gbit), found ${JSON.stringify(rate)}`);
  const bits = Number(m![1]) * { kbit: 1e3, mbit: 1e6, gbit: 1e9 }[m![2] as "kbit" | "mbit" | "gbit"];
  const burst = Math.max(16384, Math.ceil(bits / 8 / 100));
  return ["root", "tbf", "rate", rate, "burst", String(burst), "latency", "100ms"];
}

/** Caps (or, with rate undefined, uncaps) a host's link in both directions with tc tbf. Idempotent. */
export async function capHostLink(plan: NetnsHosts, index: number, rate: string | undefined): Promise<void> {
  const h = plan.hosts[index];
  check(!!h, `host ${index}: no such host in ${plan.tag}`);
  if (rate === undefined) {
    await run("tc", ["qdisc", "del", "dev", h.link, "root"], { allowFail: true });
    await run("tc", ["-n", h.netns, "qdisc", "del", "dev", "eth0", "root"], { allowFail: true });
    return;
  }
  const tbf = tbfArgs(rate);
  await run("tc", ["qdisc", "replace", "dev", h.link, ...tbf]);
  await run("tc", ["-n", h.netns, "qdisc", "replace", "dev", "eth0", ...tbf]);
}

/** Refuses a subnet that a route of this machine already covers (other than our own bridge's). */
async function checkSubnetFree(plan: NetnsHosts): Promise<void> {
  const { network, size } = parseSubnet(plan.subnet);
  const r = await run("ip", ["-4", "-o", "route", "show", "table", "all"]);
  for (const line of r.stdout.split("\n")) {
    const m = /^(?:(?:local|broadcast|unicast)\s+)?([0-9.]+)(?:\/([0-9]+))?\s.*\bdev\s+(\S+)/.exec(line.trim());
    if (!m || m[3] === plan.bridge) continue;
    const len = m[2] ? Number(m[2]) : 32;
    if (len === 0) continue; // the default route
    const rNet = ipv4ToInt(m[1]);
    const rSize = 2 ** (32 - len);
    if (rNet < network + size && network < rNet + rSize) throw new Error(`subnet ${plan.subnet} overlaps a route of this machine: ${line.trim()}`);
  }
}

/**
 * Creates (or completes) the hosts: namespaces, bridge, veth links,
 * addresses, loopback, and the bandwidth caps asked for. Idempotent: what
 * exists already is kept, what is missing or half-made is made.
 */
export async function setUpNetnsHosts(o: NetnsHostsOptions): Promise<NetnsHosts> {
  const plan = planNetnsHosts(o);
  for (const k of Object.keys(o.bandwidth ?? {})) check(plan.hosts[Number(k)] !== undefined, `bandwidth: no host ${k}`);
  await checkSubnetFree(plan);
  const existing = new Set(await listNetns());
  let links = new Set(await listLinks());
  if (!links.has(plan.bridge)) await run("ip", ["link", "add", plan.bridge, "type", "bridge"]);
  await run("ip", ["addr", "replace", `${plan.gateway}/${plan.prefixLength}`, "dev", plan.bridge]);
  await run("ip", ["link", "set", plan.bridge, "up"]);
  for (const h of plan.hosts) {
    if (!existing.has(h.netns)) await run("ip", ["netns", "add", h.netns]);
    const inner = await run("ip", ["-n", h.netns, "-o", "link", "show", "eth0"], { allowFail: true });
    if (links.has(h.link) && !inner.ok) {
      // Half-made: our end exists but not the host's; start the pair again.
      await run("ip", ["link", "del", h.link]);
      links = new Set(await listLinks());
    }
    if (!links.has(h.link)) {
      if (inner.ok) await run("ip", ["-n", h.netns, "link", "del", "eth0"]);
      const peer = `vse-${o.tag}-p${h.index}`;
      await run("ip", ["link", "add", h.link, "type", "veth", "peer", "name", peer, "netns", h.netns]);
      await run("ip", ["-n", h.netns, "link", "set", peer, "name", "eth0"]);
      // The new link has a new MAC: forget the old one, or traffic goes to it until the entry goes stale.
      await run("ip", ["neigh", "flush", "to", h.address, "dev", plan.bridge], { allowFail: true });
    }
    await run("ip", ["link", "set", h.link, "master", plan.bridge]);
    await run("ip", ["link", "set", h.link, "up"]);
    await run("ip", ["-n", h.netns, "link", "set", "lo", "up"]);
    await run("ip", ["-n", h.netns, "addr", "replace", `${h.address}/${plan.prefixLength}`, "dev", "eth0"]);
    await run("ip", ["-n", h.netns, "link", "set", "eth0", "up"]);
    const rate = o.bandwidth?.[h.index];
    if (rate !== undefined) await capHostLink(plan, h.index, rate);
  }
  return plan;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    const stat = require("fs").readFileSync(`/proc/${pid}/stat`, "utf8") as string;
    return !/\) Z /.test(stat);
  } catch {
    return false;
  }
}

/** Ends every process inside a namespace: SIGTERM, then SIGKILL after graceMs. */
export async function killNetnsProcesses(netns: string, graceMs = 2000): Promise<void> {
  let pids = await netnsPids(netns);
  for (const pid of pids) {
    try {
      process.kill(pid, "SIGTERM");
    } catch {
      // already gone
    }
  }
  const deadline = Date.now() + graceMs;
  while (pids.length && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    pids = (await netnsPids(netns)).filter(alive);
  }
  for (let round = 0; pids.length && round < 100; round++) {
    for (const pid of pids) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    await new Promise((r) => setTimeout(r, 50));
    pids = (await netnsPids(netns)).filter(alive);
  }
  if (pids.length) throw new Error(`${netns}: processes ${pids.join(", ")} would not end`);
}

/**
 * Removes every host of a tag: ends the processes inside each namespace,
 * deletes the namespaces (their veth ends go with them), any link left with
 * the tag's prefix, and the bridge. Idempotent; safe on a half-made set.
 */
export async function tearDownNetnsHosts(tag: string): Promise<void> {
  check(NETNS_TAG_PATTERN.test(tag), `tag: expected 1 to 6 lowercase letters or digits, found ${JSON.stringify(tag)}`);
  const prefix = `vse-${tag}-`;
  const errors: string[] = [];
  for (const ns of (await listNetns()).filter((n) => n.startsWith(prefix) && NETNS_NAME_PATTERN.test(n))) {
    try {
      await killNetnsProcesses(ns);
      await run("ip", ["netns", "del", ns]);
    } catch (err) {
      errors.push((err as Error).message);
    }
  }
  // Deleting a namespace deletes its veth end and so the pair; the bridge (and anything else half-made) is ours to delete.
  for (const link of (await listLinks()).filter((l) => l.startsWith(prefix))) {
    const r = await run("ip", ["link", "del", link], { allowFail: true });
    if (!r.ok && (await listLinks()).includes(link)) errors.push(`ip link del ${link}: ${r.stderr.trim()}`);
  }
  if (errors.length) throw new Error(`tear-down of ${prefix}*: ${errors.join("; ")}`);
}

/** What is left of a tag: namespaces and links (empty after a tear-down). */
export async function netnsLeftovers(tag: string): Promise<{ netns: string[]; links: string[] }> {
  const prefix = `vse-${tag}-`;
  return { netns: (await listNetns()).filter((n) => n.startsWith(prefix)), links: (await listLinks()).filter((l) => l.startsWith(prefix)) };
}
