// Checkpoint and restore (seed 004): a running guest's whole state saved into
// the host's content-addressed store, and a VM started from it later, on this
// agent or another one sharing the store. The state is saved through the
// driver contract (DriverOps.saveState: QEMU migrates to a file, as warm-launch
// snapshots do); a checkpoint is named by the sha256 of that file, so a restore
// checks its checksum before QEMU reads a byte of it.
//
//   <store>/checkpoints/<sha256 of vmstate>/vmstate      the saved state
//                                           console.log  the guest's console up to the save (its job's output began there)
//                                           meta.json    the VM spec it was taken of, the config's facts, QEMU's version
import * as crypto from "crypto";
import * as fs from "fs";
import type * as http from "http";
import * as path from "path";
import type { Agent } from "./agent";
import type { ConfigFacts } from "../drivers/qemu";
import { AgentRefusal, CHECKPOINT_REF, VM_NAME_PATTERN, VmSpec } from "./protocol";
import { writeFileAtomic } from "./state";

/** Where a restored VM's console up to its checkpoint is kept, beside the new console.log; the agent reads both. */
export const RESTORED_CONSOLE = "console.restored.log";
/** In the VM's directory while its state is being saved: an agent restarted meanwhile resumes the stopped guest instead of taking it for one that migrated away. */
export const CHECKPOINT_SAVING = "checkpoint.saving";
const CHECKPOINT_FORMAT = 1;

/** What of a config a checkpoint can only be restored into: the same machine, memory, devices, image and kernel command line. */
export interface CheckpointFacts {
  imageId: string;
  machine: string;
  accel: string;
  memoryMiB: number;
  vcpus: number;
  nics: number;
  kernelArgs: string;
}

export interface CheckpointMeta {
  format: number;
  id: string;
  vm: string;
  takenAt: string;
  /** The spec of the VM it was taken of (a restore on another host can PUT it again). */
  spec: VmSpec;
  facts: CheckpointFacts;
  qemu: string;
  bytes: number;
  consoleSha256: string;
}

function checkpointFacts(f: ConfigFacts): CheckpointFacts {
  return { imageId: f.imageId, machine: f.machine, accel: f.accel, memoryMiB: f.memoryMiB, vcpus: f.vcpus, nics: f.nics.length, kernelArgs: f.kernelArgs };
}

function qemuVersion(): string {
  const { qemuVersionLine } = require("../drivers/qemu-warm") as typeof import("../drivers/qemu-warm");
  return qemuVersionLine();
}

/** sha256 of a file, read in chunks (states are as large as the guest's touched memory). */
export function fileSha256(file: string): string {
  const h = crypto.createHash("sha256");
  const fd = fs.openSync(file, "r");
  try {
    const buf = Buffer.alloc(1 << 20);
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0;) h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return h.digest("hex");
}

/** Saves the running VM into a new checkpoint of the store; the VM then runs on (or stays paused, as its spec says). */
export function saveCheckpoint(agent: Agent, name: string): Promise<{ checkpoint: string; bytes: number; seconds: number }> {
  return agent.withVm(name, async (vm, ops) => {
    if (vm.spec.hypervisor !== "qemu" || !ops.saveState)
      throw new AgentRefusal(409, `conflict: VM ${name} runs on ${vm.spec.hypervisor}; checkpoints are taken of QEMU VMs only`);
    if (!vm.running || vm.observed.incoming) throw new AgentRefusal(409, `conflict: VM ${name} is not running here (${vm.observed.state})`);
    const { parseQemuConfig } = require("../drivers/qemu") as typeof import("../drivers/qemu");
    const facts = checkpointFacts(parseQemuConfig(vm.spec.config).facts);
    const root = agent.checkpointDir;
    const tmp = path.join(root, `.new-${process.pid}-${crypto.randomBytes(4).toString("hex")}`);
    fs.mkdirSync(tmp, { recursive: true, mode: 0o700 });
    const t0 = Date.now();
    try {
      const { CONSOLE_TAIL_BYTES, readTail } = require("./agent") as typeof import("./agent");
      let consoleText: string;
      const saving = path.join(vm.dir, CHECKPOINT_SAVING);
      fs.writeFileSync(saving, "");
      try {
        await ops.saveState(name, path.join(tmp, "vmstate"));
        // The console as it was at the save, before the guest goes on: what it printed belongs to the restored VM's job.
        consoleText = readTail(path.join(vm.dir, RESTORED_CONSOLE)) + readTail(path.join(vm.dir, "console.log"));
      } finally {
        // The guest was stopped to be saved: it runs on (the agent pauses it again if its spec says paused).
        await ops.resume(name);
        fs.rmSync(saving, { force: true });
      }
      const consoleBytes = Buffer.from(consoleText.slice(-CONSOLE_TAIL_BYTES), "utf8");
      fs.writeFileSync(path.join(tmp, "console.log"), consoleBytes);
      const id = fileSha256(path.join(tmp, "vmstate"));
      const bytes = fs.statSync(path.join(tmp, "vmstate")).size;
      // The spec as any host can start it again: without the restore it came from and its run state.
      const spec: VmSpec = { ...vm.spec };
      delete spec.restoreFrom;
      delete spec.state;
      const meta: CheckpointMeta = {
        format: CHECKPOINT_FORMAT,
        id,
        vm: name,
        takenAt: new Date().toISOString(),
        spec,
        facts,
        qemu: qemuVersion(),
        bytes,
        consoleSha256: crypto.createHash("sha256").update(consoleBytes).digest("hex"),
      };
      writeFileAtomic(path.join(tmp, "meta.json"), JSON.stringify(meta, null, 2));
      const dir = path.join(root, id);
      // Content-addressed: the same state saved twice is one checkpoint.
      if (!fs.existsSync(path.join(dir, "meta.json"))) {
        fs.rmSync(dir, { recursive: true, force: true });
        fs.renameSync(tmp, dir);
      }
      return { checkpoint: id, bytes, seconds: (Date.now() - t0) / 1000 };
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
}

function readMeta(root: string, id: string): CheckpointMeta {
  const file = path.join(root, id, "meta.json");
  let meta: CheckpointMeta;
  try {
    meta = JSON.parse(fs.readFileSync(file, "utf8")) as CheckpointMeta;
  } catch (err) {
    const missing = (err as NodeJS.ErrnoException).code === "ENOENT";
    throw new AgentRefusal(
      400,
      `restoreFrom: ${missing ? `no checkpoint ${id} in this host's store (${root})` : `${file} is unreadable: ${(err as Error).message}`}`,
    );
  }
  if (meta.format !== CHECKPOINT_FORMAT || meta.id !== id)
    throw new AgentRefusal(400, `restoreFrom: ${file} is not a checkpoint of format ${CHECKPOINT_FORMAT} named ${id}`);
  return meta;
}

/**
 * Checks that checkpoint ref can be restored into a VM of these facts, and
 * that it is intact (the state's sha256 is its name, the console's is in its
 * meta); returns its files. Every refusal is a 400 naming what differs.
 */
export function prepareRestore(root: string, ref: string, facts: ConfigFacts): { file: string; console: string } {
  const m = CHECKPOINT_REF.exec(ref);
  if (!m) throw new AgentRefusal(400, `restoreFrom: expected "checkpoint:<64 hex digits>", found ${JSON.stringify(ref).slice(0, 100)}`);
  const id = m[1];
  const meta = readMeta(root, id);
  const want = checkpointFacts(facts);
  const differs = (Object.keys(want) as (keyof CheckpointFacts)[]).filter((k) => JSON.stringify(want[k]) !== JSON.stringify(meta.facts?.[k]));
  if (differs.length)
    throw new AgentRefusal(
      400,
      `restoreFrom: checkpoint ${id} was taken of VM ${meta.vm} with ${differs.map((k) => `${k} ${JSON.stringify(meta.facts?.[k])}`).join(", ")}; this VM has ${differs.map((k) => `${k} ${JSON.stringify(want[k])}`).join(", ")}: a checkpoint restores only into the same profile and image`,
    );
  if (meta.qemu !== qemuVersion()) throw new AgentRefusal(400, `restoreFrom: checkpoint ${id} was saved by ${meta.qemu}; this host runs ${qemuVersion()}`);
  const file = path.join(root, id, "vmstate");
  const consoleFile = path.join(root, id, "console.log");
  let sum: string;
  let consoleSum: string;
  try {
    sum = fileSha256(file);
    consoleSum = fileSha256(consoleFile);
  } catch (err) {
    throw new AgentRefusal(400, `restoreFrom: checkpoint ${id} is incomplete: ${(err as Error).message}`);
  }
  if (sum !== id) throw new AgentRefusal(400, `restoreFrom: checkpoint ${id} is corrupt: its state's sha256 is ${sum}; nothing was started`);
  if (consoleSum !== meta.consoleSha256) throw new AgentRefusal(400, `restoreFrom: checkpoint ${id} is corrupt: its console.log does not match its meta.json`);
  return { file, console: consoleFile };
}

export function listCheckpoints(root: string): CheckpointMeta[] {
  let ids: string[];
  try {
    ids = fs.readdirSync(root).filter((d) => /^[0-9a-f]{64}$/.test(d));
  } catch {
    return [];
  }
  const out: CheckpointMeta[] = [];
  for (const id of ids) {
    try {
      out.push(readMeta(root, id));
    } catch {
      // half-removed or foreign: not listed
    }
  }
  return out.sort((a, b) => a.takenAt.localeCompare(b.takenAt));
}

/**
 * The agent's lifecycle endpoints (protocol.ts): checkpoints and accounting.
 * Undefined for any other path, which server.ts then routes as before.
 */
export async function lifecycleRoute(agent: Agent, req: http.IncomingMessage, url: URL, body: () => Promise<unknown>): Promise<[number, unknown] | undefined> {
  const only = (method: string) => {
    if (req.method !== method) throw new AgentRefusal(405, `${req.method} is not allowed on ${url.pathname}`);
  };
  if (url.pathname === "/v1/accounting") {
    only("GET");
    return [200, agent.accounting.report()];
  }
  if (url.pathname === "/v1/checkpoints") {
    only("GET");
    return [200, { checkpoints: listCheckpoints(agent.checkpointDir) }];
  }
  const m = /^\/v1\/vms\/([^/]+)\/checkpoint$/.exec(url.pathname);
  if (!m) return undefined;
  only("POST");
  let name: string;
  try {
    name = decodeURIComponent(m[1]);
  } catch {
    throw new AgentRefusal(400, "url: malformed percent-encoding");
  }
  if (!VM_NAME_PATTERN.test(name)) throw new AgentRefusal(400, `name: expected a lowercase DNS label, found ${JSON.stringify(name.slice(0, 100))}`);
  const b = await body();
  if (typeof b !== "object" || b === null || Array.isArray(b) || Object.keys(b).length) throw new AgentRefusal(400, "body: expected {}");
  return [200, await saveCheckpoint(agent, name)];
}
