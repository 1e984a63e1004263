// Image staging to 16 bandwidth-capped namespace hosts (issue 9; `npm run
// bench -- --only staging`). One generated image (the host's kernel as
// vmlinuz, random bytes as initrd.img, 48 MiB in all: large enough that the
// copy, not the set-up, is measured) is staged from the controller's store to
// 16 hosts, each with its own store, every host's link capped both ways with
// tc tbf (capHostLink) and the controller's own link (the bridge's egress in
// the root namespace, which only the controller's traffic crosses) capped at
// the same rate, so that "every host pulling from the controller" shares one
// link as it would on a real machine. Side by side in one run:
//   one copy:  the image to one host over one capped link (the reference);
//   tree:      down a k=2 tree, each agent forwarding verified chunks while it receives;
//   chain:     the same pipeline with k=1 (each host's uplink feeds one child);
//   central:   the controller sends to all 16 itself.
// Every agent is a real agent process in its own namespace, over TLS.
import * as crypto from "crypto";
import * as fs from "fs";
import * as path from "path";
import { newClusterToken } from "../agent/protocol";
import { AgentLaunch } from "../allocation/local";
import { capHostLink, NetnsHosts, netnsLeftovers, setUpNetnsHosts, tearDownNetnsHosts } from "../allocation/netns";
import { clusterCa, startStaticAgent, StaticAgentRecord, stopStaticCluster } from "../allocation/static";
import { stageImage, StageResult, stagingFanout } from "../allocation/staging";
import { clusterKey } from "../drivers/network";
import { hostKernel } from "../image/busybox";

const TAG = "bstg";
const SUBNET = "10.214.1.0/24";
const HOSTS = 16;
// VSE_BENCH_STAGING_RATE (a tc rate in mbit, e.g. 100mbit) overrides the cap of every link.
const RATE = process.env.VSE_BENCH_STAGING_RATE ?? "100mbit";
const IMAGE_BYTES = 48 * 1024 * 1024;
const CHUNK_BYTES = 512 * 1024;
export const STAGING_TARGET_RATIO = 1.3;

export interface StagingRun {
  seconds: number;
  /** seconds / the one-copy reference. */
  ratio: number;
  controllerBytesSent: number;
  hostsStaged: number;
}

export interface StagingBenchResult {
  hosts: number;
  rate: string;
  image: { bytes: number; kind: string };
  chunkBytes: number;
  controllerLinkCapped: boolean;
  /** size × 8 / rate: the wire time of one copy, no protocol. */
  wireSeconds: number;
  oneCopy: { seconds: number };
  tree: StagingRun & { fanout: number };
  chain: StagingRun & { fanout: number };
  central: StagingRun;
  target: number;
  /**
   * Seed 003's question (central image storage becomes the bottleneck as jobs
   * start at once): the image to the hosts of 1, 2, 4, 8 and 16 jobs, one host
   * each, pipelined in the shape a VirtualCluster picks against the controller
   * sending to every host.
   */
  byJobs?: { hosts: number; fanout: number; pipelined: number; central: number }[];
  /** When each host of the chain was seen complete (s from the start, polled every 100 ms), in chain order. */
  chainCompleteAfter?: number[];
  /** The shape a VirtualCluster stages this image to these hosts with (stagingFanout). */
  clusterFanout?: number;
}

function rateBits(): number {
  const m = /^([1-9][0-9]{0,4})mbit$/.exec(RATE);
  if (!m) throw new Error(`VSE_BENCH_STAGING_RATE: expected <n>mbit, found ${JSON.stringify(RATE)}`);
  return Number(m[1]) * 1e6;
}

/** A generated image in store: the host's kernel, random bytes up to IMAGE_BYTES, an image.json naming it. */
function generateImage(store: string): string {
  const id = crypto.randomBytes(32).toString("hex");
  const dir = path.join(store, id);
  fs.mkdirSync(dir, { recursive: true });
  fs.copyFileSync(hostKernel().path, path.join(dir, "vmlinuz"));
  const rest = IMAGE_BYTES - fs.statSync(path.join(dir, "vmlinuz")).size;
  fs.writeFileSync(path.join(dir, "initrd.img"), crypto.randomBytes(Math.max(rest, 1024 * 1024)));
  fs.writeFileSync(path.join(dir, "image.json"), JSON.stringify({ id, generated: "bench: host kernel + random initrd.img" }));
  return id;
}

/** Caps what the root namespace sends into the bridge: the controller's link (bridged host-to-host traffic does not cross it). */
async function capControllerLink(plan: NetnsHosts, rate: string | undefined): Promise<void> {
  const execa = require("execa") as typeof import("execa");
  if (rate === undefined) {
    await execa("tc", ["qdisc", "del", "dev", plan.bridge, "root"], { reject: false });
    return;
  }
  const burst = String(Math.max(16384, Math.ceil(rateBits() / 8 / 100)));
  await execa("tc", ["qdisc", "replace", "dev", plan.bridge, "root", "tbf", "rate", rate, "burst", burst, "latency", "100ms"]);
}

export async function stagingBench(tmp: string, log: (m: string) => void = console.log): Promise<StagingBenchResult> {
  const dir = fs.mkdtempSync(path.join(tmp, "staging-"));
  const store = path.join(dir, "store");
  const clusterDir = path.join(dir, "cluster");
  const imageId = generateImage(store);
  rateBits();
  const bytes = ["vmlinuz", "initrd.img", "image.json"].reduce((n, f) => n + fs.statSync(path.join(store, imageId, f)).size, 0);
  await tearDownNetnsHosts(TAG);
  const plan = await setUpNetnsHosts({
    tag: TAG,
    count: HOSTS,
    subnet: SUBNET,
    bandwidth: Object.fromEntries(Array.from({ length: HOSTS }, (_, i) => [i, RATE])),
  });
  const key = clusterKey("bench", path.basename(dir), "staging");
  const launch: AgentLaunch = { token: newClusterToken(key), clusterKey: key, imageStore: store };
  let agents: StaticAgentRecord[] = [];
  const ca = await clusterCa(clusterDir, key);
  try {
    await capControllerLink(plan, RATE);
    agents = await Promise.all(
      plan.hosts.map((h, i) =>
        startStaticAgent(path.join(clusterDir, `host-${i}`), launch, ca, i, { address: h.address, netns: h.netns, ownImageStore: true }),
      ),
    );
    const targets = agents.map((a) => ({ host: a.host, url: a.url }));
    const clear = () => {
      for (const a of agents) {
        fs.rmSync(path.join(a.stateDir, "images", imageId), { recursive: true, force: true });
        fs.rmSync(path.join(a.stateDir, "images", ".staging"), { recursive: true, force: true });
      }
    };
    const stage = async (label: string, hosts: typeof targets, mode: "tree" | "central", fanout: number): Promise<StageResult> => {
      clear();
      const r = await stageImage(imageId, hosts, {
        mode,
        fanout,
        chunkSize: CHUNK_BYTES,
        token: launch.token,
        ca: { cert: ca.cert, keyFile: ca.keyFile },
        imageStore: store,
        timeoutMs: 600000,
      });
      if (r.staged !== hosts.length) throw new Error(`${label}: ${r.staged} of ${hosts.length} hosts staged`);
      for (let i = 0; i < hosts.length; i++) {
        const got = path.join(agents[hosts[i].host].stateDir, "images", imageId, "initrd.img");
        if (fs.statSync(got).size !== fs.statSync(path.join(store, imageId, "initrd.img")).size)
          throw new Error(`${label}: host ${i} has a different initrd.img`);
      }
      log(`staging ${label}: ${r.seconds.toFixed(2)} s, controller sent ${r.controllerBytesSent} bytes`);
      return r;
    };
    const one = await stage("one copy (1 host)", targets.slice(0, 1), "central", 1);
    const tree = await stage(`tree k=2 (${HOSTS} hosts)`, targets, "tree", 2);
    const chain = await stage(`chain k=1 (${HOSTS} hosts)`, targets, "tree", 1);
    const central = await stage(`central (${HOSTS} hosts)`, targets, "central", 1);
    const byJobs: NonNullable<StagingBenchResult["byJobs"]> = [];
    for (const n of [1, 2, 4, 8]) {
      const fanout = stagingFanout(n, Math.ceil(bytes / CHUNK_BYTES));
      const p = await stage(`pipelined k=${fanout} (${n} hosts)`, targets.slice(0, n), "tree", fanout);
      const c = n === 1 ? p : await stage(`central (${n} hosts)`, targets.slice(0, n), "central", 1);
      byJobs.push({ hosts: n, fanout, pipelined: p.seconds, central: c.seconds });
    }
    byJobs.push({ hosts: HOSTS, fanout: stagingFanout(HOSTS, Math.ceil(bytes / CHUNK_BYTES)), pipelined: chain.seconds, central: central.seconds });
    const run = (r: StageResult): StagingRun => ({
      seconds: r.seconds,
      ratio: r.seconds / one.seconds,
      controllerBytesSent: r.controllerBytesSent,
      hostsStaged: r.staged,
    });
    return {
      hosts: HOSTS,
      rate: RATE,
      image: { bytes, kind: "generated: the host's kernel as vmlinuz + random bytes as initrd.img" },
      chunkBytes: CHUNK_BYTES,
      controllerLinkCapped: true,
      wireSeconds: (bytes * 8) / rateBits(),
      oneCopy: { seconds: one.seconds },
      tree: { ...run(tree), fanout: 2 },
      chain: { ...run(chain), fanout: 1 },
      central: run(central),
      target: STAGING_TARGET_RATIO,
      clusterFanout: stagingFanout(HOSTS, Math.ceil(bytes / CHUNK_BYTES)),
      chainCompleteAfter: chain.hosts.map((h) => h.completeAfter ?? NaN),
      byJobs,
    };
  } finally {
    try {
      if (agents.length) await stopStaticCluster(clusterDir, agents, launch, ca.cert);
    } finally {
      await capControllerLink(plan, undefined);
      for (const h of plan.hosts) await capHostLink(plan, h.index, undefined).catch(() => undefined);
      await tearDownNetnsHosts(TAG);
      fs.rmSync(dir, { recursive: true, force: true });
    }
    const left = await netnsLeftovers(TAG);
    if (left.netns.length || left.links.length) throw new Error(`staging bench left ${JSON.stringify(left)}`);
  }
}

export function stagingMarkdown(s: StagingBenchResult & { date: string }): string[] {
  const sec = (x: number) => `${x.toFixed(2)} s`;
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  const verdict = (r: number) => (r <= s.target ? "met" : `**not met** (${r.toFixed(2)}×)`);
  return [
    `**Image staging** (${s.date.slice(0, 10)}; one run): one ${mib(s.image.bytes)} image (${s.image.kind}) to ${s.hosts} namespace hosts, each agent a real process serving TLS in its own namespace with its own store; every host link capped at ${s.rate} both ways with tc tbf${s.controllerLinkCapped ? `, and the controller's link (the bridge's egress) at ${s.rate} too` : ""}; ${mib(s.chunkBytes)} chunks, each sha256-checked on arrival, the manifest signed by the cluster CA. Wire time of one copy at ${s.rate}: ${sec(s.wireSeconds)}.`,
    "",
    `| how | hosts | time | × one copy | controller sent | target ≤ ${s.target}× one copy |`,
    "|---|---|---|---|---|---|",
    `| one copy over one capped link (reference) | 1 | ${sec(s.oneCopy.seconds)} | 1.00× | ${mib(s.image.bytes)} | |`,
    `| tree k=${s.tree.fanout}, pipelined (each agent forwards verified chunks while it receives) | ${s.tree.hostsStaged} | ${sec(s.tree.seconds)} | ${s.tree.ratio.toFixed(2)}× | ${mib(s.tree.controllerBytesSent)} | ${verdict(s.tree.ratio)} |`,
    `| chain (tree k=${s.chain.fanout}), pipelined | ${s.chain.hostsStaged} | ${sec(s.chain.seconds)} | ${s.chain.ratio.toFixed(2)}× | ${mib(s.chain.controllerBytesSent)} | ${verdict(s.chain.ratio)} |`,
    `| central: the controller sends to every host | ${s.central.hostsStaged} | ${sec(s.central.seconds)} | ${s.central.ratio.toFixed(2)}× | ${mib(s.central.controllerBytesSent)} | |`,
    "",
    `Chunks follow each other on one TLS stream per link (provider/agent/staging.ts), so a chunk is whole at a child one chunk's wire time after it was whole at its parent. A host's uplink is capped like its downlink, so an inner host of the k=2 tree feeds its two children at half the rate each (at best k copies' time); the chain keeps every link at full rate and pays a lag per level: here ${sec((s.chain.seconds - s.oneCopy.seconds) / (s.hosts - 1))} per host ((chain − one copy) / ${s.hosts - 1}), against ${sec((s.chunkBytes * 8) / (s.wireSeconds > 0 ? (s.image.bytes * 8) / s.wireSeconds : 1))} for one chunk on the wire.${s.chainCompleteAfter ? ` The chain's hosts were seen complete at ${s.chainCompleteAfter.map((x) => x.toFixed(2)).join(", ")} s (in chain order, polled every 100 ms).` : ""}${s.clusterFanout !== undefined ? ` A VirtualCluster picks the shape per image and cluster size (stagingFanout in provider/allocation/staging.ts: about k·(chunks + depth) chunk times for a k-ary tree): for this image and ${s.hosts} hosts, k=${s.clusterFanout}.` : ""}`,
    "",
    ...(s.byJobs
      ? [
          `Seed 003's question, how image delivery grows as more jobs start at once, on the same capped links (one host per job; ${mib(s.image.bytes)} image; same run):`,
          "",
          "| jobs (hosts) | pipelined (shape) | central: the controller sends to every host | central / pipelined |",
          "|---|---|---|---|",
          ...s.byJobs.map((b) => `| ${b.hosts} | ${sec(b.pipelined)} (k=${b.fanout}) | ${sec(b.central)} | ${(b.central / b.pipelined).toFixed(2)}× |`),
          "",
        ]
      : []),
  ];
}
