// Warm launch for QEMU (seed 003's launch time, made shorter than a boot): a
// guest of a warm image boots once to the point where it waits for its
// identity; its state is saved to a snapshot in the host's store; later VMs of
// the same image and profile restore that snapshot (-incoming, then cont) and
// are handed their name and MAC on their control port instead of booting.
import * as crypto from "crypto";
import * as fs from "fs";
import * as net from "net";
import * as path from "path";
import type { ConfigFacts, VmPaths } from "./qemu";
import { QEMU_BINARY } from "./qemu";
import { qmpCommand } from "./qmp";

/** Bumped when what a snapshot holds or how it is restored changes, so old ones are not used. */
const SNAPSHOT_FORMAT = 1;
/** Paths that go into QEMU's exec: migration URIs (a shell runs them): nothing a shell would interpret. */
const SAFE_PATH = /^[A-Za-z0-9/_.-]+$/;

let qemuVersion: string | undefined;
/** QEMU's version line: a snapshot is only restored by the QEMU that saved it. */
export function qemuVersionLine(): string {
  if (qemuVersion === undefined) {
    const { execFileSync } = require("child_process") as typeof import("child_process");
    qemuVersion = execFileSync(QEMU_BINARY, ["--version"], { encoding: "utf8" }).split("\n")[0];
  }
  return qemuVersion;
}

/**
 * The snapshot a warm VM restores: one per image, machine, accelerator,
 * memory, vCPUs, number of NICs, kernel command line and QEMU version, so a
 * change to any of them (a changed environment gives a new image id) never
 * restores an old one. Name, MACs and the cluster network may differ: the
 * guest is handed its identity after the restore.
 */
export function snapshotKey(facts: ConfigFacts): string {
  const identity = {
    format: SNAPSHOT_FORMAT,
    image: facts.imageId,
    machine: facts.machine,
    accel: facts.accel,
    memoryMiB: facts.memoryMiB,
    vcpus: facts.vcpus,
    nics: facts.nics.length,
    kernelArgs: facts.kernelArgs,
    qemu: qemuVersionLine(),
  };
  return crypto.createHash("sha256").update(JSON.stringify(identity)).digest("hex");
}

export function snapshotFile(dir: string, key: string): string {
  return path.join(dir, key, "vmstate");
}

/** The -incoming URI that restores a snapshot, or undefined when there is none (the VM then boots cold). */
export function restoreUri(dir: string | undefined, facts: ConfigFacts): string | undefined {
  return dir ? restoreUriOfKey(dir, snapshotKey(facts)) : undefined;
}

/** The -incoming URI that restores the snapshot of key in dir, or undefined when dir has no complete one. */
export function restoreUriOfKey(dir: string, key: string): string | undefined {
  const file = snapshotFile(dir, key);
  if (!fs.existsSync(path.join(path.dirname(file), "snapshot.json")) || !SAFE_PATH.test(file)) return undefined;
  return `exec:cat ${file}`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Waits until the guest prints its ready marker on the console; false if the VM ended or time ran out first. */
export async function waitForReady(paths: VmPaths, marker: string, alive: () => boolean, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (alive() && Date.now() < end) {
    try {
      if (fs.readFileSync(paths.console, "utf8").includes(marker)) return true;
    } catch {
      // not written yet
    }
    await sleep(50);
  }
  return false;
}

/** Waits until QEMU's run state is one of states (e.g. an incoming migration has loaded: "paused"). */
async function waitForStatus(qmp: string, states: string[], timeoutMs: number): Promise<string> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const st = ((await qmpCommand(qmp, "query-status")) as { status: string }).status;
    if (states.includes(st) || Date.now() > end) return st;
    await sleep(20);
  }
}

/** The -incoming URI that loads a saved state file (a snapshot or a checkpoint); refuses a path a shell would interpret. */
export function fileRestoreUri(file: string): string {
  if (!SAFE_PATH.test(file)) throw new Error(`state file ${file} has characters a migration URI cannot carry`);
  return `exec:cat ${file}`;
}

/**
 * Saves the guest's whole state into file: stop, migrate into a temp file
 * beside it, rename it into place (a reader never sees half a state). The
 * guest is left stopped (QEMU: postmigrate); the caller lets it go on.
 * Shared by warm-launch snapshots and checkpoints (agent/checkpoint.ts).
 */
export async function saveState(paths: VmPaths, file: string): Promise<void> {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.${crypto.randomBytes(4).toString("hex")}.tmp`;
  if (!SAFE_PATH.test(tmp)) throw new Error(`state path ${tmp} has characters a migration URI cannot carry`);
  await qmpCommand(paths.qmp, "stop");
  try {
    await qmpCommand(paths.qmp, "migrate", { uri: `exec:cat > ${tmp}` });
    const end = Date.now() + 120000;
    for (;;) {
      const info = (await qmpCommand(paths.qmp, "query-migrate")) as { status?: string; "error-desc"?: string };
      if (info.status === "completed") break;
      if (info.status === "failed" || info.status === "cancelled" || Date.now() > end)
        throw new Error(`saving the VM's state ${info.status ?? "timed out"}: ${info["error-desc"] ?? ""}`);
      await sleep(20);
    }
    fs.renameSync(tmp, file);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

/**
 * Saves the running guest, waiting at its ready point, to the store with its
 * metadata, then lets the guest go on. Two VMs saving the same snapshot at
 * once both succeed; one of the equal files wins.
 */
export async function saveSnapshot(paths: VmPaths, dir: string, facts: ConfigFacts): Promise<string> {
  const key = snapshotKey(facts);
  const file = snapshotFile(dir, key);
  try {
    await saveState(paths, file);
    fs.writeFileSync(
      path.join(path.dirname(file), "snapshot.json"),
      JSON.stringify({ key, image: facts.imageId, machine: facts.machine, memoryMiB: facts.memoryMiB, vcpus: facts.vcpus, qemu: qemuVersionLine() }, null, 2),
    );
    return key;
  } finally {
    await qmpCommand(paths.qmp, "cont");
  }
}

/** A restored guest arrives paused, as it was saved: once its state has loaded, let it run. */
export async function resumeRestored(paths: VmPaths): Promise<void> {
  const st = await waitForStatus(paths.qmp, ["paused", "postmigrate", "running"], 60000);
  if (st === "inmigrate") throw new Error("the snapshot did not load within 60 s");
  if (st !== "running") await qmpCommand(paths.qmp, "cont");
}

/**
 * Writes the guest's identity line to its control port (a unix socket QEMU
 * listens on) and keeps the connection until the guest has taken it (taken()
 * turns true, e.g. its job has begun): QEMU feeds the guest's UART only as
 * fast as it accepts bytes, and a connection closed early could lose the rest.
 */
export function handIdentity(paths: VmPaths, line: string, taken: () => boolean, timeoutMs = 30000): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.connect(paths.control);
    const end = Date.now() + timeoutMs;
    s.on("error", reject);
    s.on("connect", () => {
      s.write(line);
      const poll = setInterval(() => {
        if (taken() || Date.now() > end) {
          clearInterval(poll);
          s.end();
          resolve();
        }
      }, 50);
    });
  });
}
