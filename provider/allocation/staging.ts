// The controller's side of image staging (issue 9; the agents' side is
// agent/staging.ts). stageImage hashes an image of the controller's store
// into a manifest, signs it with the cluster CA's key, and sends it:
//   tree:    to the root of a k-ary tree of the hosts; each agent forwards
//            every verified chunk to its children while it still receives,
//            so a tree costs about one copy plus a chunk's time per level;
//   central: to every host itself (the baseline that seed 003 saw become the
//            bottleneck at 8–16 hosts).
// It then watches every host's status until each has the image in its store.
// A host whose sender gave up (its parent failed, a link stayed down) is sent
// the image directly by the controller. Hosts that have it already are
// skipped (they still forward to their subtree) and counted.
import * as crypto from "crypto";
import * as fs from "fs";
import * as path from "path";
import {
  buildManifest,
  DEFAULT_CHUNK_BYTES,
  FileSource,
  Forwarder,
  ForwardStatus,
  signManifest,
  StagedKind,
  stagedFiles,
  StagingLink,
  StagingStatus,
  StagingTarget,
} from "../agent/staging";
import { IMAGE_ID_PATTERN, snapshotRootOf } from "../agent/image-store";

/** One host to stage to: its index and its agent's https URL. */
export interface StageHost {
  host: number;
  url: string;
}

export interface StageOptions {
  mode: "tree" | "central";
  token: string;
  /** The cluster's CA: its certificate (pinned) and its private key (signs the manifest). */
  ca: { cert: string; keyFile: string };
  /** The controller's image store: the image is <imageStore>/<id>/{vmlinuz,initrd.img,image.json}. */
  imageStore: string;
  /** What is staged (default an image): a warm-launch snapshot is <imageStore>/../snapshots/<key>/{vmstate,snapshot.json} (where `vse warm` makes it). */
  kind?: StagedKind;
  /** k of the tree (default 2); 1 is a pipelined chain. */
  fanout?: number;
  chunkSize?: number;
  /** Give up (and say which hosts lack the image) after this long; default 10 minutes. */
  timeoutMs?: number;
  log?: (m: string) => void;
}

export interface StagedHost {
  host: number;
  url: string;
  /** It had the image before: nothing was sent to it. */
  skipped: boolean;
  bytesReceived: number;
  bytesVerified: number;
  chunksRefused: number;
  /** What its sender (a parent agent or the controller) reports about the link into it. */
  link?: ForwardStatus;
  /** The controller sent to it directly after its tree sender gave up. */
  repaired: boolean;
  /** Seconds from the start until the controller saw it complete (polled every 100 ms). */
  completeAfter?: number;
}

export interface StageResult {
  image: string;
  mode: "tree" | "central";
  fanout: number;
  chunkSize: number;
  bytesTotal: number;
  seconds: number;
  hosts: StagedHost[];
  skipped: number;
  staged: number;
  /** Bytes the controller itself sent (one copy per root in a tree, one per host centrally). */
  controllerBytesSent: number;
}

/** The k-ary tree over hosts in list order: hosts[0] is the root, hosts[i]'s children are hosts[k*i+1 … k*i+k]. */
export function stagingTree(hosts: StageHost[], fanout: number): StagingTarget[] {
  if (!Number.isInteger(fanout) || fanout < 1 || fanout > 64) throw new Error(`fanout: expected an integer from 1 to 64, found ${fanout}`);
  const node = (i: number): StagingTarget => ({
    url: hosts[i].url,
    children: Array.from({ length: fanout }, (_, j) => fanout * i + 1 + j)
      .filter((c) => c < hosts.length)
      .map(node),
  });
  return hosts.length ? [node(0)] : [];
}

/**
 * The tree shape that stages an image of `chunks` chunks to `hosts` hosts
 * soonest, with every host's link equal and capped both ways: an inner host
 * feeds its k children over its one uplink (k copies of every chunk), and
 * each level adds about k chunks' wire time of lag, so the last host is done
 * after about k·(chunks + depth) chunk times. A chain (k = 1) wins while the
 * hosts are fewer than about the image's chunks; a tree beyond that.
 */
export function stagingFanout(hosts: number, chunks: number): number {
  const depth = (k: number) => {
    let d = 0;
    for (let reach = 1, level = 1; reach < hosts; d++) reach += level *= k;
    return d;
  };
  let best = 1;
  for (let k = 2; k <= 4; k++) if (k * (chunks + depth(k)) < best * (chunks + depth(best))) best = k;
  return best;
}

function parentIndex(i: number, fanout: number, mode: StageOptions["mode"]): number | undefined {
  return mode === "central" || i === 0 ? undefined : Math.floor((i - 1) / fanout);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Where the controller keeps an image (by id) or a warm-launch snapshot (by key). */
export function sourceDir(imageStore: string, id: string, kind: StagedKind): string {
  return path.join(kind === "snapshot" ? snapshotRootOf(imageStore) : imageStore, id);
}

/**
 * Stages image imageId (or, with kind "snapshot", the snapshot of that key) from the controller's store to every host's store;
 * resolves once every host has it (verified, renamed into its store), and
 * throws, naming the hosts without it, when that does not happen in time.
 */
export async function stageImage(imageId: string, hosts: StageHost[], o: StageOptions): Promise<StageResult> {
  if (!IMAGE_ID_PATTERN.test(imageId)) throw new Error(`image id ${JSON.stringify(imageId)}: expected 64 lower-case hex digits`);
  if (o.mode !== "tree" && o.mode !== "central") throw new Error(`mode: expected tree or central, found ${JSON.stringify(o.mode)}`);
  const seen = new Set<string>();
  hosts.forEach((h, i) => {
    if (seen.has(h.url)) throw new Error(`hosts[${i}]: ${h.url} is listed twice`);
    seen.add(h.url);
  });
  const fanout = o.fanout ?? 2;
  const chunkSize = o.chunkSize ?? DEFAULT_CHUNK_BYTES;
  const log = o.log ?? (() => undefined);
  const kind = o.kind ?? "image";
  const dir = sourceDir(o.imageStore, imageId, kind);
  const files = stagedFiles(kind);
  if (!fs.existsSync(path.join(dir, files[files.length - 1]))) throw new Error(`${kind} ${imageId} is not in the controller's store (${path.dirname(dir)})`);
  const manifest = await buildManifest(dir, imageId, chunkSize, kind);
  const signed = signManifest(manifest, fs.readFileSync(o.ca.keyFile));
  const bytesTotal = manifest.files.reduce((n, f) => n + f.size, 0);
  const run = crypto.randomBytes(8).toString("hex");
  const source = await FileSource.open(dir, manifest, signed, false, run);
  const roots = o.mode === "tree" ? stagingTree(hosts, fanout) : hosts.map((h) => ({ url: h.url, children: [] }));
  const t0 = process.hrtime.bigint();
  const senders = new Map<string, Forwarder>(roots.map((r) => [r.url, new Forwarder(source, r, o.token, o.ca.cert, log)]));
  const repaired = new Set<string>();
  const watch = hosts.map((h) => new StagingLink(h.url, o.token, o.ca.cert));
  const statuses: (StagingStatus | undefined)[] = hosts.map(() => undefined);
  const deadline = Date.now() + (o.timeoutMs ?? 600000);
  let finishedAt: bigint | undefined;
  // When the controller first saw each host complete (it asks every 100 ms): where a pipeline's time goes.
  const completedAt: (number | undefined)[] = hosts.map(() => undefined);
  try {
    for (;;) {
      await Promise.all(
        watch.map(async (l, i) => {
          if (statuses[i]?.state === "complete" && !statuses[i]?.children.some((c) => c.state === "sending")) return;
          try {
            const st = await l.status(imageId);
            // What a host says about an earlier run (before our start reached it) is not an answer.
            if (st.run === run) statuses[i] = st;
            if (st.run === run && st.state === "complete") completedAt[i] ??= Number(process.hrtime.bigint() - t0) / 1e9;
          } catch {
            // Unreachable for now (a link down): asked again next round.
          }
        }),
      );
      if (finishedAt === undefined && statuses.every((s) => s?.state === "complete")) finishedAt = process.hrtime.bigint();
      if (finishedAt !== undefined) break;
      // A host whose sender gave up gets the image from the controller itself.
      hosts.forEach((h, i) => {
        if (statuses[i]?.state === "complete" || repaired.has(h.url)) return;
        const p = parentIndex(i, fanout, o.mode);
        const link = p === undefined ? senders.get(h.url)?.status : statuses[p]?.children.find((c) => c.url === h.url);
        const parentFailed = p !== undefined && statuses[p]?.state === "failed";
        if (link?.state === "failed" || parentFailed) {
          log(`staging ${imageId.slice(0, 12)}: host ${h.host} (${h.url}) lost its sender (${link?.error ?? "its parent failed"}); sending to it directly`);
          repaired.add(h.url);
          senders.get(h.url)?.stop();
          senders.set(h.url, new Forwarder(source, { url: h.url, children: [] }, o.token, o.ca.cert, log));
        }
      });
      const refused = hosts.filter((_, i) => repaired.has(hosts[i].url) && senders.get(hosts[i].url)?.status.state === "failed");
      if (refused.length)
        throw new Error(
          `staging image ${imageId}: ${refused.map((h) => `host ${h.host} (${h.url}): ${senders.get(h.url)?.status.error ?? "failed"}`).join("; ")}`,
        );
      if (Date.now() > deadline) {
        const missing = hosts.filter((_, i) => statuses[i]?.state !== "complete");
        throw new Error(
          `staging image ${imageId}: not complete within ${o.timeoutMs ?? 600000} ms on ${missing.map((h) => `host ${h.host} (${h.url}, ${statuses[hosts.indexOf(h)]?.state ?? "unreachable"}${statuses[hosts.indexOf(h)]?.error ? `: ${statuses[hosts.indexOf(h)]?.error}` : ""})`).join(", ")}`,
        );
      }
      await sleep(100);
    }
    // Every host has it; the forwarders' last answers are in by now (a host completes on the last chunk its sender sends).
    await Promise.all([...senders.values()].map((s) => s.done));
    const final = await Promise.all(
      watch.map((l, i) =>
        l.status(imageId).then(
          (st) => (st.run === run ? st : statuses[i]!),
          () => statuses[i]!,
        ),
      ),
    );
    const staged: StagedHost[] = hosts.map((h, i) => {
      const s = final[i];
      const p = parentIndex(i, fanout, o.mode);
      const link = repaired.has(h.url) || p === undefined ? senders.get(h.url)?.status : final[p].children.find((c) => c.url === h.url);
      return {
        host: h.host,
        url: h.url,
        skipped: s.skipped,
        bytesReceived: s.bytesReceived,
        bytesVerified: s.bytesVerified,
        chunksRefused: s.chunksRefused,
        ...(link ? { link } : {}),
        repaired: repaired.has(h.url),
        ...(completedAt[i] !== undefined ? { completeAfter: completedAt[i] } : {}),
      };
    });
    return {
      image: imageId,
      mode: o.mode,
      fanout,
      chunkSize,
      bytesTotal,
      seconds: Number(finishedAt - t0) / 1e9,
      hosts: staged,
      skipped: staged.filter((h) => h.skipped).length,
      staged: staged.filter((h) => !h.skipped).length,
      controllerBytesSent: [...senders.values()].reduce((n, s) => n + s.status.bytesSent, 0),
    };
  } finally {
    for (const s of senders.values()) s.stop();
    await Promise.allSettled([...senders.values()].map((s) => s.done));
    for (const l of watch) l.close();
    await source.close();
  }
}

/**
 * Stages a cluster's image to every host of a `static` cluster whose agents
 * keep their own image store (StaticHost.ownImageStore), from the
 * controller's store (launch.imageStore), pipelined down the tree shape that
 * finishes soonest (stagingFanout: a chain for a cluster of fewer hosts than
 * the image has chunks; allocation.fanout shapes the bootstrap, not this).
 * To be called before the cluster's VMs are created.
 */
export async function stageClusterImage(
  req: import("./allocator").AllocationRequest,
  state: import("./allocator").ClusterAgents,
  imageId: string,
  opts: { mode?: StageOptions["mode"]; log?: (m: string) => void; kind?: StagedKind } = {},
): Promise<StageResult> {
  if (!state.ca) throw new Error(`cluster ${req.clusterName}: its agents serve no TLS (no cluster CA): they share this machine's image store`);
  const { clusterCa } = require("./static") as typeof import("./static");
  const ca = await clusterCa(req.clusterDir, req.clusterKey);
  const kind = opts.kind ?? "image";
  const dir = sourceDir(req.launch.imageStore, imageId, kind);
  const size = (f: string) => fs.statSync(path.join(dir, f), { throwIfNoEntry: false })?.size ?? 0;
  const bytes = stagedFiles(kind).reduce((n, f) => n + size(f), 0);
  const fanout = stagingFanout(state.agents.length, Math.ceil(bytes / DEFAULT_CHUNK_BYTES));
  return stageImage(
    imageId,
    state.agents.map((a) => ({ host: a.host, url: a.url })),
    {
      mode: opts.mode ?? "tree",
      token: req.launch.token,
      ca: { cert: ca.cert, keyFile: ca.keyFile },
      imageStore: req.launch.imageStore,
      kind,
      fanout,
      log: opts.log,
    },
  );
}
