// Image staging over namespace hosts (issue 9): four hosts, each agent with an
// image store of its own (StaticHost.ownImageStore), a k=2 tree (host 0 the
// root, 1 and 2 its children, 3 the child of 1). A real busybox image goes
// down the tree byte for byte and a VM boots from it on a leaf; hosts that
// have it are skipped; a link cut mid-transfer resumes from what the receiver
// verified; a hostile sender's corrupted chunk and forged manifest are
// refused, and a partial image is never visible in the store. A warm-launch
// snapshot made on the controller goes down the same tree into each host's
// snapshots, and a leaf's first warm VM restores it instead of booting.
// Needs root (iproute2, tc) and the compiled agent (npx tsc -p tsconfig.json).
import * as crypto from "crypto";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { ImageNotFound, ImageStore, snapshotRootOf } from "../../provider/agent/image-store";
import { newClusterToken } from "../../provider/agent/protocol";
import { buildManifest, signManifest, SNAPSHOT_STAGED_FILES, STAGED_FILES, StagingLink, StagingRefused, StagingStatus } from "../../provider/agent/staging";
import { AgentLaunch } from "../../provider/allocation/local";
import { capHostLink, netnsLeftovers, NetnsHosts, setUpNetnsHosts, tearDownNetnsHosts } from "../../provider/allocation/netns";
import { clusterCa, StaticAgentRecord, startStaticAgent, staticClient, stopStaticCluster } from "../../provider/allocation/static";
import { StageHost, stageImage, StageOptions, stagingFanout, stagingTree } from "../../provider/allocation/staging";
import { ClusterCa } from "../../provider/allocation/tls";
import { clusterKey } from "../../provider/drivers/network";
import { makeSnapshot } from "../../provider/cli/warm";
import { parseQemuConfig } from "../../provider/drivers/qemu";
import { snapshotKey } from "../../provider/drivers/qemu-warm";
import { buildImage } from "../../provider/image/busybox";
import { jobEnv, vmSpec, waitForVm } from "../support/agent";
import { processesUnder } from "../support/stack";

const execa = require("execa") as typeof import("execa");

jest.setTimeout(240 * 1000);

// Only addresses in this subnet (and 127.0.0.0/8) are ever used.
const SUBNET = "10.213.3.0/26";
const TAG = "tstg";
const RUN = "00000000000000aa";
const COUNT = 4;
let dir: string;
let cacheDir: string;
let clusterDir: string;
let hosts: NetnsHosts;
let launch: AgentLaunch;
let ca: ClusterCa;
let agents: StaticAgentRecord[] = [];
let imageId: string;
let targets: StageHost[];

const storeOf = (i: number) => path.join(agents[i].stateDir, "images");
const options = (mode: StageOptions["mode"] = "tree"): StageOptions => ({
  mode,
  fanout: 2,
  token: launch.token,
  ca: { cert: ca.cert, keyFile: ca.keyFile },
  imageStore: launch.imageStore,
});

function sameImage(store: string, id: string): void {
  for (const f of STAGED_FILES) {
    const want = fs.readFileSync(path.join(launch.imageStore, imageId, f));
    expect(fs.readFileSync(path.join(store, id, f)).equals(want)).toBe(true);
  }
}

/** An image of random bytes under a fresh id (with its image.json), its manifest in 1 MiB chunks signed by the cluster CA, and a reader of its chunks. */
async function randomImage(sub: string, vmlinuzBytes: number, initrdBytes: number) {
  const id = crypto.randomBytes(32).toString("hex");
  const src = path.join(dir, sub, id);
  fs.mkdirSync(src, { recursive: true });
  fs.writeFileSync(path.join(src, "vmlinuz"), crypto.randomBytes(vmlinuzBytes));
  fs.writeFileSync(path.join(src, "initrd.img"), crypto.randomBytes(initrdBytes));
  fs.writeFileSync(path.join(src, "image.json"), JSON.stringify({ id }));
  const manifest = await buildManifest(src, id, 1024 * 1024);
  const signed = signManifest(manifest, fs.readFileSync(ca.keyFile));
  const chunk = (f: number, c: number) => fs.readFileSync(path.join(src, STAGED_FILES[f])).subarray(c * 1024 * 1024, (c + 1) * 1024 * 1024);
  return { id, src, manifest, signed, chunk };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

beforeAll(async () => {
  await tearDownNetnsHosts(TAG);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-stg-"));
  cacheDir = path.join(dir, "cache");
  clusterDir = path.join(dir, "clusters", "c");
  imageId = buildImage(jobEnv(), cacheDir).id;
  hosts = await setUpNetnsHosts({ tag: TAG, count: COUNT, subnet: SUBNET });
  const k = clusterKey("test", path.basename(dir), "c");
  launch = { token: newClusterToken(k), clusterKey: k, imageStore: path.join(cacheDir, "images") };
  // Started one by one rather than by the tree bootstrap (agent/tree.ts), which gives every host the same store so far.
  ca = await clusterCa(clusterDir, k);
  agents = await Promise.all(
    hosts.hosts.map((h, i) => startStaticAgent(path.join(clusterDir, `host-${i}`), launch, ca, i, { address: h.address, netns: h.netns, ownImageStore: true })),
  );
  targets = agents.map((a) => ({ host: a.host, url: a.url }));
});

afterAll(async () => {
  let left: unknown[] = [];
  try {
    if (agents.length) await stopStaticCluster(clusterDir, agents, launch, ca.cert);
    left = processesUnder(dir);
  } finally {
    await tearDownNetnsHosts(TAG);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  // Every agent (and VM) stopped on its own, before the namespaces were torn down.
  expect(left).toEqual([]);
  expect(await netnsLeftovers(TAG)).toEqual({ netns: [], links: [] });
});

test("the staging shape: a chain while the hosts are fewer than the image's chunks, a tree beyond", () => {
  expect(stagingFanout(16, 96)).toBe(1);
  expect(stagingFanout(2, 1)).toBe(1);
  expect(stagingFanout(1024, 96)).toBe(2);
  expect(stagingFanout(200, 96)).toBe(2);
  expect(stagingFanout(64, 96)).toBe(1);
});

test("the tree is k-ary in host order", () => {
  const t = stagingTree(targets, 2);
  expect(t.map((n) => n.url)).toEqual([targets[0].url]);
  expect(t[0].children.map((n) => n.url)).toEqual([targets[1].url, targets[2].url]);
  expect(t[0].children[0].children.map((n) => n.url)).toEqual([targets[3].url]);
  expect(t[0].children[1].children).toEqual([]);
});

test("an image staged down the tree arrives byte-identical on every host, and a VM boots from it on a leaf", async () => {
  const leaf = staticClient(agents[3], launch.token, ca.cert);
  // Each host has a store of its own: before staging, the leaf's agent refuses to boot the image.
  await expect(leaf.putVm("vm-0", vmSpec({ key: launch.clusterKey, cacheDir }, "vm-0"))).rejects.toThrow(/not in this host's image store/);
  const r = await stageImage(imageId, targets, options());
  console.log(`staged ${r.bytesTotal} bytes to ${COUNT} hosts down a k=2 tree in ${r.seconds.toFixed(2)} s`);
  expect(r.skipped).toBe(0);
  expect(r.staged).toBe(COUNT);
  // The controller sent one copy (to the root); every other copy came from an agent.
  expect(r.controllerBytesSent).toBe(r.bytesTotal);
  expect(r.hosts[3].link).toMatchObject({ url: targets[3].url, state: "done", bytesSent: r.bytesTotal });
  for (let i = 0; i < COUNT; i++) {
    sameImage(storeOf(i), imageId);
    expect(r.hosts[i]).toMatchObject({ bytesVerified: r.bytesTotal, chunksRefused: 0, repaired: false });
    expect(fs.existsSync(path.join(storeOf(i), ".staging", imageId, "image"))).toBe(false);
  }
  await leaf.putVm("vm-0", vmSpec({ key: launch.clusterKey, cacheDir }, "vm-0"));
  const v = await waitForVm(leaf, "vm-0", (x) => x.job.state === "done", 150000);
  expect(v.job).toMatchObject({ state: "done", exitCode: 0 });
  expect(v.job.output).toContain("job-42");
  await leaf.deleteVm("vm-0");
});

test("hosts that have the image are skipped and counted; a skipped host still forwards to its subtree", async () => {
  fs.rmSync(path.join(storeOf(2), imageId), { recursive: true });
  const r = await stageImage(imageId, targets, options());
  expect(r.skipped).toBe(3);
  expect(r.staged).toBe(1);
  expect(r.hosts.map((h) => h.skipped)).toEqual([true, true, false, true]);
  // The root had it: the controller sent nothing, host 0 sent host 2 everything from its own store.
  expect(r.controllerBytesSent).toBe(0);
  expect(r.hosts[2].link).toMatchObject({ url: targets[2].url, state: "done", bytesSent: r.bytesTotal, skipped: false });
  expect(r.hosts[3].link).toMatchObject({ bytesSent: 0, skipped: true });
  sameImage(storeOf(2), imageId);

  // Centrally the controller asks every host itself: all four skip.
  const c = await stageImage(imageId, targets, options("central"));
  expect(c.skipped).toBe(COUNT);
  expect(c.controllerBytesSent).toBe(0);
});

test("a link cut mid-transfer is resumed from what the receiver verified", async () => {
  fs.rmSync(path.join(storeOf(3), imageId), { recursive: true, force: true });
  // Slow enough to be cut halfway: ~9 MB at 8 Mbit/s takes ~9 s.
  await capHostLink(hosts, 3, "8mbit");
  const watch = new StagingLink(targets[3].url, launch.token, ca.cert);
  const link = hosts.hosts[3].link;
  try {
    const staging = stageImage(imageId, targets, options());
    staging.catch(() => undefined);
    let before: StagingStatus | undefined;
    for (let i = 0; i < 600; i++) {
      before = await watch.status(imageId).catch(() => undefined);
      if (before && before.state === "receiving" && before.bytesVerified >= 2 * 1024 * 1024) break;
      await sleep(50);
    }
    expect(before!.bytesVerified).toBeGreaterThanOrEqual(2 * 1024 * 1024);
    expect(before!.state).toBe("receiving");
    await execa("ip", ["link", "set", link, "down"]);
    // Longer than a sender waits on a silent request: the link into host 3 is dropped and taken up again.
    await sleep(14000);
    await execa("ip", ["link", "set", link, "up"]);
    const r = await staging;
    const h = r.hosts[3];
    console.log(`host 3: ${JSON.stringify(h)}`);
    expect(h.skipped).toBe(false);
    expect(h.repaired).toBe(false);
    expect(h.link!.resumes).toBeGreaterThanOrEqual(1);
    // What host 3 had verified before the cut was not sent again.
    expect(h.link!.bytesNotResent).toBeGreaterThanOrEqual(before!.bytesVerified);
    // Re-sent after the link was taken up again: only what host 3 lacked, less than the whole image.
    expect(h.link!.bytesSentSinceResume).toBeLessThanOrEqual(r.bytesTotal - before!.bytesVerified);
    expect(h.link!.bytesSentSinceResume).toBeLessThan(r.bytesTotal);
    // Whole chunks that reached host 3, counting any that came twice: at most one chunk (in flight at the cut) more than one copy.
    expect(h.bytesReceived).toBeLessThanOrEqual(r.bytesTotal + r.chunkSize);
    expect(h.bytesVerified).toBe(r.bytesTotal);
    sameImage(storeOf(3), imageId);
  } finally {
    watch.close();
    await execa("ip", ["link", "set", link, "up"]);
    await capHostLink(hosts, 3, undefined);
  }
});

test("a hostile sender: a forged manifest and a corrupted chunk are refused, a partial image is never visible", async () => {
  // An image the controller never built: random bytes under a fresh id, with its image.json.
  const { id, src, manifest, signed, chunk } = await randomImage("hostile", 3 * 1024 * 1024 + 17, 1024 * 1024);
  const store = new ImageStore(storeOf(2));
  const sender = new StagingLink(targets[2].url, launch.token, ca.cert);
  try {
    // Signed by a key that is not the cluster CA's.
    const { privateKey } = crypto.generateKeyPairSync("ec", { namedCurve: "prime256v1" });
    await expect(sender.start(id, signManifest(manifest, privateKey.export({ type: "pkcs8", format: "pem" })), [], RUN)).rejects.toMatchObject({ status: 403 });
    // A valid signature over an edited manifest.
    await expect(sender.start(id, { ...signed, manifest: signed.manifest.replace(manifest.files[0].chunks[0], "0".repeat(64)) }, [], RUN)).rejects.toThrow(
      /signature/,
    );

    const st = await sender.start(id, signed, [], RUN);
    expect(st.state).toBe("receiving");
    const bad = Buffer.from(chunk(0, 0));
    bad[1000] ^= 0xff;
    const refused = await sender.sendChunk(id, 0, 0, bad).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(StagingRefused);
    expect((refused as StagingRefused).status).toBe(422);
    let s = await sender.status(id);
    expect(s).toMatchObject({ state: "receiving", bytesVerified: 0, chunksRefused: 1 });
    // Nothing of the refused chunk was written, and nothing is in the store.
    const part = path.join(storeOf(2), ".staging", id, "image", "vmlinuz");
    expect(
      fs
        .readFileSync(part)
        .subarray(0, 1024 * 1024)
        .equals(Buffer.alloc(1024 * 1024)),
    ).toBe(true);
    expect(fs.existsSync(path.join(storeOf(2), id))).toBe(false);

    // All but the last chunk: still nothing visible as an image.
    const all: [number, number][] = manifest.files.flatMap((f, fi) => f.chunks.map((_, c) => [fi, c] as [number, number]));
    for (const [f, c] of all.slice(0, -1)) await sender.sendChunk(id, f, c, chunk(f, c));
    s = await sender.status(id);
    expect(s.state).toBe("receiving");
    expect(() => store.resolve(id, "vmlinuz")).toThrow(ImageNotFound);
    expect(() => store.meta(id)).toThrow(ImageNotFound);
    expect(fs.readdirSync(storeOf(2)).filter((n) => n.startsWith(id.slice(0, 8)))).toEqual([]);
    // A chunk of the wrong length is refused before its body is read.
    await expect(sender.sendChunk(id, 0, 0, chunk(0, 0).subarray(1))).rejects.toMatchObject({ status: 400 });

    const [lf, lc] = all[all.length - 1];
    await sender.sendChunk(id, lf, lc, chunk(lf, lc));
    s = await sender.status(id);
    expect(s).toMatchObject({ state: "complete", bytesVerified: manifest.files.reduce((n, f) => n + f.size, 0), chunksRefused: 1 });
    expect(fs.readFileSync(store.resolve(id, "vmlinuz")).equals(fs.readFileSync(path.join(src, "vmlinuz")))).toBe(true);
    expect(fs.existsSync(path.join(storeOf(2), ".staging", id, "image"))).toBe(false);
  } finally {
    sender.close();
  }
});

test("a hostile stream: no token, no session, a corrupted chunk, a frame for no chunk and a cut inside a chunk leave nothing of theirs", async () => {
  const { id, src, manifest, signed, chunk } = await randomImage("hostile-stream", 2 * 1024 * 1024 + 5, 512 * 1024);
  const sender = new StagingLink(targets[1].url, launch.token, ca.cert);
  const stranger = new StagingLink(targets[1].url, `vse1.${launch.token.split(".")[1]}.${"0".repeat(64)}`, ca.cert);
  try {
    await expect(stranger.openStream(id, () => undefined)).rejects.toMatchObject({ status: 401 });
    await expect(sender.openStream(id, () => undefined)).rejects.toMatchObject({ status: 409 });
    await sender.start(id, signed, [], RUN);

    let stream = await sender.openStream(id, () => undefined);
    const bad = Buffer.from(chunk(0, 1));
    bad[7] ^= 1;
    await stream.send(0, 0, chunk(0, 0));
    await stream.send(0, 1, bad);
    const refused = await stream.finish().catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(StagingRefused);
    expect((refused as StagingRefused).status).toBe(422);
    let s = await sender.status(id);
    // The good chunk before it stands; the corrupted one was not written.
    expect(s).toMatchObject({ state: "receiving", bytesVerified: 1024 * 1024, chunksRefused: 1, have: ["100", "0", "0"] });

    stream = await sender.openStream(id, () => undefined);
    const noSuchChunk = stream;
    // The refusal may come while the frame is still being written, or after.
    await expect((async () => (await noSuchChunk.send(0, 7, chunk(0, 1)), await noSuchChunk.finish()))()).rejects.toMatchObject({ status: 404 });

    // Half a chunk, then the connection is gone: nothing of it is kept.
    stream = await sender.openStream(id, () => undefined);
    await stream.send(0, 1, chunk(0, 1).subarray(0, 300 * 1024));
    stream.close();
    await sleep(500);
    s = await sender.status(id);
    expect(s).toMatchObject({ state: "receiving", bytesVerified: 1024 * 1024, have: ["100", "0", "0"] });

    // The rest, in one stream, answered chunk by chunk.
    let answered = 0;
    stream = await sender.openStream(id, (n) => (answered += n));
    const rest: [number, number][] = [
      [0, 1],
      [0, 2],
      [1, 0],
      [2, 0],
    ];
    for (const [f, c] of rest) await stream.send(f, c, chunk(f, c));
    await stream.finish();
    stream.close();
    const total = manifest.files.reduce((n, f) => n + f.size, 0);
    expect(answered).toBe(total - 1024 * 1024);
    s = await sender.status(id);
    expect(s).toMatchObject({ state: "complete", bytesVerified: total, chunksRefused: 1 });
    for (const f of STAGED_FILES) expect(fs.readFileSync(path.join(storeOf(1), id, f)).equals(fs.readFileSync(path.join(src, f)))).toBe(true);
  } finally {
    sender.close();
    stranger.close();
  }
});

test("a warm-launch snapshot made on the controller is staged down the tree, and a leaf's first warm VM restores it", async () => {
  const warmEnv = { ...jobEnv("stay-up", ["/bin/sh", "-c", "echo warm-$((6*7)) on $(hostname)"]), name: "w", warm: true as const };
  const spec = (name: string) => vmSpec({ key: launch.clusterKey, cacheDir }, name, { env: warmEnv });
  const warmImage = parseQemuConfig(spec("w-0").config).facts.imageId;
  // Made where `vse warm` makes it: the controller's store, through the QEMU driver.
  const key = await makeSnapshot(cacheDir, "w-0", spec("w-0").config, { command: warmEnv.job.command, env: warmEnv.job.env });
  expect(key).toBe(snapshotKey(parseQemuConfig(spec("w-1").config).facts));
  await stageImage(warmImage, targets, options());
  const r = await stageImage(key, targets, { ...options(), kind: "snapshot" });
  expect(r).toMatchObject({ image: key, skipped: 0, staged: COUNT });
  const mine = path.join(cacheDir, "snapshots", key);
  for (let i = 0; i < COUNT; i++) {
    const there = path.join(snapshotRootOf(storeOf(i)), key);
    for (const f of SNAPSHOT_STAGED_FILES) expect(fs.readFileSync(path.join(there, f)).equals(fs.readFileSync(path.join(mine, f)))).toBe(true);
    // Not in the image store: a snapshot is no image.
    expect(fs.existsSync(path.join(storeOf(i), key))).toBe(false);
  }
  // Staged again: every host has it.
  expect(await stageImage(key, targets, { ...options(), kind: "snapshot" })).toMatchObject({ skipped: COUNT, staged: 0 });

  const leaf = staticClient(agents[3], launch.token, ca.cert);
  await leaf.putVm("w-1", spec("w-1"));
  const v = await waitForVm(leaf, "w-1", (x) => x.job.state === "done", 150000);
  expect(v.job).toMatchObject({ state: "done", exitCode: 0, output: "warm-42 on w-1\n" });
  expect(v.observed.launch).toBe("warm");
  expect(fs.readdirSync(snapshotRootOf(storeOf(3)))).toEqual([key]);
  await leaf.deleteVm("w-1");
});

test("a snapshot's manifest binds its kind and its key: an image cannot land among snapshots, nor a snapshot under another key", async () => {
  const sender = new StagingLink(targets[1].url, launch.token, ca.cert);
  try {
    // Snapshot files whose snapshot.json names another key than the one they are staged under.
    const key = crypto.randomBytes(32).toString("hex");
    const src = path.join(dir, "forged-snapshot", key);
    fs.mkdirSync(src, { recursive: true });
    fs.writeFileSync(path.join(src, "vmstate"), crypto.randomBytes(300 * 1024));
    fs.writeFileSync(path.join(src, "snapshot.json"), JSON.stringify({ key: "f".repeat(64) }));
    const manifest = await buildManifest(src, key, 1024 * 1024, "snapshot");
    expect(manifest.kind).toBe("snapshot");
    const signed = signManifest(manifest, fs.readFileSync(ca.keyFile));
    await sender.start(key, signed, [], RUN);
    for (const [f, name] of SNAPSHOT_STAGED_FILES.entries()) await sender.sendChunk(key, f, 0, fs.readFileSync(path.join(src, name)));
    const s = await sender.status(key);
    expect(s.state).toBe("failed");
    expect(s.error).toMatch(`snapshot.json names snapshot ${"f".repeat(64)}, not ${key}`);
    expect(fs.existsSync(path.join(snapshotRootOf(storeOf(1)), key))).toBe(false);
    expect(fs.existsSync(path.join(snapshotRootOf(storeOf(1)), "f".repeat(64)))).toBe(false);

    // The kind is signed: an image's manifest edited to say snapshot no longer verifies, and a signed one with an image's files is refused.
    const { id, signed: imageSigned, manifest: imageManifest } = await randomImage("kind", 1024, 1024);
    const edited = JSON.stringify({ ...JSON.parse(imageSigned.manifest), kind: "snapshot" });
    await expect(sender.start(id, { ...imageSigned, manifest: edited }, [], RUN)).rejects.toMatchObject({ status: 403 });
    const mixed = signManifest({ ...imageManifest, kind: "snapshot" }, fs.readFileSync(ca.keyFile));
    await expect(sender.start(id, mixed, [], RUN)).rejects.toThrow(/files\[0\]\.name: expected vmstate|files: expected vmstate, snapshot.json/);
    const odd = signManifest({ ...imageManifest, kind: "kernel" } as unknown as typeof imageManifest, fs.readFileSync(ca.keyFile));
    await expect(sender.start(id, odd, [], RUN)).rejects.toThrow(/kind: expected "snapshot" or none/);
  } finally {
    sender.close();
  }
});
