// The VM job runner (issue 10, seed 003): what one scheduler job slot runs on
// its node. Given an image of the node's content-addressed store, a VM profile
// and V VMs per slot, it makes the job's private state directory (its "clone":
// per-VM console, pidfile, QMP socket; the image is an initramfs unpacked into
// guest RAM, so there is no disk to overlay and the host's image is never
// written), boots the V guests through the node agent's own code (Agent
// in-process over that directory, with the site policy: the V2M driver
// contract is the one road to a hypervisor), waits for each guest's result
// markers on its console, powers the guests down, removes the state and
// reports outputs and exit codes. On SIGTERM/SIGINT (scancel) it powers every
// guest down through the driver (stop with grace) and removes everything.
//
// Timestamps go to a timing logger on the submitting host (seed 003: a socket
// logger on the launch host, so no clock skew between nodes): the runner only
// sends events, the logger stamps them with its own clock on receipt.
import * as fs from "fs";
import * as net from "net";
import * as path from "path";
import type { ProfileModel } from "../model/resolve";
import type { SitePolicy } from "../model/types.generated";

/** What `vse job submit` writes for the runner (job.json): every value checked again by checkJobSpec before use. */
export interface VmJobSpec {
  version: 1;
  /** The VirtualCluster the job takes its environment and profile from. */
  cluster: string;
  imageId: string;
  /** The environment's kernel parameters (the agent's allowlist checks them again). */
  kernelArgs: string[];
  /** The profile with accel resolved (tcg or kvm): the runner never probes. */
  profile: Omit<ProfileModel, "accel"> & { accel: "tcg" | "kvm" };
  afterJob: "stay-up" | "power-off";
  vmsPerSlot: number;
  /** Seconds from a guest's start until its result must be there. */
  timeoutSeconds: number;
  /** Seconds of ACPI power-down before the driver's forced stop. */
  stopGraceSeconds: number;
  /** The node's content-addressed image store. */
  imageStore: string;
  /** The site policy file the agent code enforces; none: the permissive local default. */
  policyFile?: string;
  /** Where each slot's private state directory is made (<stateRoot>/<job>_<task>). */
  stateRoot: string;
  /** The timing logger: unix:<absolute path> or tcp:<IPv4>:<port>. */
  timing?: string;
}

export interface VmJobVmResult {
  name: string;
  /** done: the guest printed its result; timeout, failed (the VM ended without one), cancelled (scancel). */
  state: "done" | "timeout" | "failed" | "cancelled";
  exitCode: number | null;
  output: string | null;
  message?: string;
}

export interface VmJobTaskResult {
  jobId: string;
  task: number;
  node: string;
  cancelled: boolean;
  vms: VmJobVmResult[];
}

/** One timing event as the logger records it: stamped with the logger's clock (ms since the epoch) on receipt. */
export interface TimingEvent {
  event: "submitted" | "step-start" | "vm-started" | "guest-begin" | "result" | "stopped" | "cancelled";
  task?: number;
  vm?: number;
  at: number;
}

const NAME = /^[a-z][a-z0-9-]{0,62}$/;
const IMAGE_ID = /^[0-9a-f]{64}$/;
const KERNEL_ARG = /^[A-Za-z0-9_.,:=/+-]{1,200}$/;
const JOB_ID = /^[1-9][0-9]{0,9}$/;
const NODE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/;
export const MAX_VMS_PER_SLOT = 16;

function absPath(field: string, p: unknown): string {
  if (typeof p !== "string" || !path.isAbsolute(p) || /[\0-\x1f\x7f]/.test(p) || path.normalize(p) !== p)
    throw new Error(`${field}: expected a normalised absolute path, found ${JSON.stringify(p)}`);
  return p;
}

function int(field: string, v: unknown, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max)
    throw new Error(`${field}: expected a whole number from ${min} to ${max}, found ${JSON.stringify(v)}`);
  return v;
}

function oneOf<T extends string>(field: string, v: unknown, allowed: readonly T[]): T {
  if (typeof v !== "string" || !(allowed as readonly string[]).includes(v))
    throw new Error(`${field}: expected one of ${allowed.join(", ")}, found ${JSON.stringify(v)}`);
  return v as T;
}

/** A timing logger address: unix:<absolute path> or tcp:<IPv4>:<port>. */
export function checkTimingAddress(field: string, v: unknown): string {
  if (typeof v === "string" && v.startsWith("unix:")) {
    absPath(field, v.slice(5));
    return v;
  }
  const m = typeof v === "string" ? /^tcp:((?:[0-9]{1,3}\.){3}[0-9]{1,3}):([1-9][0-9]{0,4})$/.exec(v) : null;
  if (!m || m[1].split(".").some((o) => Number(o) > 255) || Number(m[2]) > 65535)
    throw new Error(`${field}: expected unix:<absolute path> or tcp:<IPv4 address>:<port>, found ${JSON.stringify(v)}`);
  return v as string;
}

/** Checks a job spec field by field (it crossed a filesystem and a scheduler); errors name the file and the field. */
export function checkJobSpec(value: unknown, file: string): VmJobSpec {
  const where = (f: string) => `${file}: ${f}`;
  if (typeof value !== "object" || value === null) throw new Error(`${file}: expected a JSON object`);
  const v = value as Record<string, unknown>;
  if (v.version !== 1) throw new Error(`${where("version")}: expected 1, found ${JSON.stringify(v.version)}`);
  if (typeof v.cluster !== "string" || !NAME.test(v.cluster))
    throw new Error(`${where("cluster")}: expected a cluster name, found ${JSON.stringify(v.cluster)}`);
  if (typeof v.imageId !== "string" || !IMAGE_ID.test(v.imageId))
    throw new Error(`${where("imageId")}: expected 64 hex digits, found ${JSON.stringify(v.imageId)}`);
  if (!Array.isArray(v.kernelArgs) || v.kernelArgs.length > 64 || v.kernelArgs.some((a) => typeof a !== "string" || !KERNEL_ARG.test(a)))
    throw new Error(`${where("kernelArgs")}: expected at most 64 words of ${KERNEL_ARG.source}, found ${JSON.stringify(v.kernelArgs)}`);
  const p = v.profile as Record<string, unknown> | undefined;
  if (typeof p !== "object" || p === null) throw new Error(`${where("profile")}: expected an object`);
  if (typeof p.name !== "string" || !NAME.test(p.name)) throw new Error(`${where("profile.name")}: expected a profile name, found ${JSON.stringify(p.name)}`);
  const profile = {
    name: p.name,
    hypervisor: oneOf(where("profile.hypervisor"), p.hypervisor, ["qemu", "libvirt"] as const),
    memoryMiB: int(where("profile.memoryMiB"), p.memoryMiB, 16, 1024 * 1024),
    vcpus: int(where("profile.vcpus"), p.vcpus, 1, 256),
    machine: oneOf(where("profile.machine"), p.machine, ["microvm", "q35", "pc"] as const),
    accel: oneOf(where("profile.accel"), p.accel, ["tcg", "kvm"] as const),
  };
  return {
    version: 1,
    cluster: v.cluster,
    imageId: v.imageId,
    kernelArgs: v.kernelArgs as string[],
    profile,
    afterJob: oneOf(where("afterJob"), v.afterJob, ["stay-up", "power-off"] as const),
    vmsPerSlot: int(where("vmsPerSlot"), v.vmsPerSlot, 1, MAX_VMS_PER_SLOT),
    timeoutSeconds: int(where("timeoutSeconds"), v.timeoutSeconds, 1, 7 * 86400),
    stopGraceSeconds: int(where("stopGraceSeconds"), v.stopGraceSeconds, 0, 300),
    imageStore: absPath(where("imageStore"), v.imageStore),
    ...(v.policyFile !== undefined ? { policyFile: absPath(where("policyFile"), v.policyFile) } : {}),
    stateRoot: absPath(where("stateRoot"), v.stateRoot),
    ...(v.timing !== undefined ? { timing: checkTimingAddress(where("timing"), v.timing) } : {}),
  };
}

/** Where the runner's events go: one connection, one JSON line per event; a logger that is gone never fails the job. */
export class TimingClient {
  private sock?: net.Socket;
  private closed?: Promise<void>;
  constructor(address: string | undefined) {
    if (!address) return;
    const m = /^tcp:(.+):([0-9]+)$/.exec(address);
    const sock = address.startsWith("unix:") ? net.createConnection(address.slice(5)) : net.createConnection(Number(m![2]), m![1]);
    sock.on("error", () => undefined);
    this.closed = new Promise((r) => sock.once("close", () => r()));
    this.sock = sock;
  }
  send(e: Omit<TimingEvent, "at">): void {
    if (this.sock && !this.sock.destroyed) this.sock.write(JSON.stringify(e) + "\n");
  }
  /** Flushes and closes, waiting at most timeoutMs. */
  async close(timeoutMs = 2000): Promise<void> {
    if (!this.sock) return;
    this.sock.end();
    await Promise.race([this.closed, new Promise((r) => setTimeout(r, timeoutMs).unref())]);
    this.sock.destroy();
  }
}

/** The timing logger of the submitting process: stamps each event with this host's clock as it arrives. */
export class TimingLogger {
  readonly events: TimingEvent[] = [];
  private readonly listeners = new Set<(e: TimingEvent) => void>();
  private constructor(
    private readonly server: net.Server,
    readonly address: string,
  ) {}

  /** Listens on a unix socket (pathname sockets reach across network namespaces: the Slurm nodes here are namespace hosts). */
  static async listen(socketPath: string): Promise<TimingLogger> {
    absPath("timing socket", socketPath);
    // sun_path holds 108 bytes: a longer path would be cut silently by some callers and refused by others.
    if (Buffer.byteLength(socketPath) > 100) throw new Error(`timing socket ${socketPath}: longer than 100 bytes; choose a shorter --state-dir`);
    fs.rmSync(socketPath, { force: true });
    // The server exists before the logger that owns it: connections find it here.
    const owner: { logger?: TimingLogger } = {};
    const server = net.createServer((conn) => {
      let buf = "";
      conn.setEncoding("utf8");
      conn.on("error", () => undefined);
      conn.on("data", (chunk: string) => {
        const at = Date.now();
        buf += chunk;
        let i: number;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          owner.logger?.accept(line, at);
        }
        // A sender that never ends its lines cannot grow this without bound.
        if (buf.length > 4096) conn.destroy();
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(socketPath, () => resolve());
    });
    owner.logger = new TimingLogger(server, `unix:${socketPath}`);
    return owner.logger;
  }

  private accept(line: string, at: number): void {
    let e: Partial<TimingEvent>;
    try {
      e = JSON.parse(line) as Partial<TimingEvent>;
    } catch {
      return;
    }
    const events = ["submitted", "step-start", "vm-started", "guest-begin", "result", "stopped", "cancelled"];
    if (typeof e.event !== "string" || !events.includes(e.event)) return;
    const ev: TimingEvent = { event: e.event, at, ...(Number.isInteger(e.task) ? { task: e.task } : {}), ...(Number.isInteger(e.vm) ? { vm: e.vm } : {}) };
    this.record(ev);
  }

  record(e: TimingEvent): void {
    this.events.push(e);
    for (const l of this.listeners) l(e);
  }

  /** Resolves with the first event (already recorded or still to come) that matches. */
  waitFor(match: (e: TimingEvent) => boolean, timeoutMs: number): Promise<TimingEvent> {
    const found = this.events.find(match);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.listeners.delete(l);
        reject(new Error(`timing logger: no matching event within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      const l = (e: TimingEvent) => {
        if (!match(e)) return;
        clearTimeout(t);
        this.listeners.delete(l);
        resolve(e);
      };
      this.listeners.add(l);
    });
  }

  async close(): Promise<void> {
    await new Promise<void>((r) => this.server.close(() => r()));
    if (this.address.startsWith("unix:")) fs.rmSync(this.address.slice(5), { force: true });
  }
}

/** Where the job's task keeps its state: one private directory per slot, named after the Slurm job and task. */
export function taskStateDir(spec: VmJobSpec, jobId: string, task: number): string {
  if (!JOB_ID.test(jobId)) throw new Error(`job id: expected a Slurm job id, found ${JSON.stringify(jobId)}`);
  int("task", task, 0, 100000);
  return path.join(spec.stateRoot, `${jobId}_${task}`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Runs one job slot: V guests through the agent's code, to their results; see
 * the file's comment. abort (SIGTERM/SIGINT) powers every guest down and ends
 * the slot with its VMs reported as cancelled. Always removes the state
 * directory; when removing a VM fails, the error is thrown after everything was tried.
 */
export async function runVmJob(
  spec: VmJobSpec,
  ctx: { jobId: string; task: number; node: string },
  opts: { log: (msg: string) => void; abort: { aborted: boolean; onAbort(fn: () => void): void } },
): Promise<VmJobTaskResult> {
  const { Agent } = require("../agent/agent") as typeof import("../agent/agent");
  const { ImageStore } = require("../agent/image-store") as typeof import("../agent/image-store");
  const { waitForLock } = require("../agent/lock") as typeof import("../agent/lock");
  const { loadSitePolicy } = require("../model/site-policy") as typeof import("../model/site-policy");
  const { clusterKey } = require("../drivers/network") as typeof import("../drivers/network");
  const { imageRef, markersFor } = require("../image/busybox") as typeof import("../image/busybox");
  const { renderVmConfig } = require("../render/render") as typeof import("../render/render");
  if (!NODE.test(ctx.node)) throw new Error(`node: expected a node name, found ${JSON.stringify(ctx.node)}`);
  const timing = new TimingClient(spec.timing);
  timing.send({ event: "step-start", task: ctx.task });
  const log = opts.log;
  const stateDir = taskStateDir(spec, ctx.jobId, ctx.task);
  // The policy is read once, before anything starts: a job slot is short-lived.
  const policy: SitePolicy = loadSitePolicy({ file: spec.policyFile }).doc;
  // Names, MACs and the (unused) network derive from a key of this slot alone: two slots never share a VM identity.
  const key = clusterKey("vse-job", ctx.jobId, `${spec.cluster}-${ctx.task}`);
  const markers = markersFor(spec.imageId);
  const names = Array.from({ length: spec.vmsPerSlot }, (_, i) => `vm-${i}`);
  const results: VmJobVmResult[] = names.map((name) => ({ name, state: "timeout", exitCode: null, output: null }));
  fs.mkdirSync(spec.stateRoot, { recursive: true, mode: 0o700 });
  fs.mkdirSync(stateDir, { mode: 0o700 });
  let lock: net.Server | undefined;
  let agent: import("../agent/agent").Agent | undefined;
  let cancelled = false;
  const errors: string[] = [];
  let wake: () => void = () => undefined;
  opts.abort.onAbort(() => {
    cancelled = true;
    log(`signal received: powering ${names.length} guest(s) down`);
    wake();
  });
  // A signal that came before this point (the runner was still starting) counts as well.
  if (opts.abort.aborted) cancelled = true;
  try {
    lock = await waitForLock(stateDir, 10000);
    agent = new Agent({ stateDir, clusterKey: key, images: new ImageStore(spec.imageStore), policy: () => policy, log });
    await agent.load();
    const a = agent;
    const puts = names.map(async (name, i) => {
      const config = renderVmConfig({
        cluster: spec.cluster,
        clusterKey: key,
        vm: { name, index: i, host: 0, profile: spec.profile },
        image: imageRef(spec.imageId),
        accel: spec.profile.accel,
        kernelArgs: spec.kernelArgs,
      });
      const view = await a.put(name, {
        hypervisor: spec.profile.hypervisor,
        config,
        markers,
        stopGraceSeconds: spec.stopGraceSeconds,
        afterJob: spec.afterJob,
      });
      timing.send({ event: "vm-started", task: ctx.task, vm: i });
      log(`${name} started (pid ${view.observed.pid})`);
    });
    // Every start settles before anything else (also a cancel): a half-started VM is then known to the agent and powered down with the rest.
    const started = await Promise.allSettled(puts);
    started.forEach((r, i) => {
      if (r.status === "rejected") {
        results[i] = { name: names[i], state: "failed", exitCode: null, output: null, message: (r.reason as Error).message };
        log(`${names[i]} did not start: ${(r.reason as Error).message}`);
      }
    });
    const begun = new Set<number>();
    const deadline = Date.now() + spec.timeoutSeconds * 1000;
    const consoleOf = (name: string) => path.join(stateDir, "vms", name, "console.log");
    const pending = new Set(names.map((_, i) => i).filter((i) => results[i].state === "timeout"));
    while (pending.size && !cancelled && Date.now() < deadline) {
      for (const i of [...pending]) {
        const v = await a.get(names[i]);
        if (!v) continue;
        if (!begun.has(i)) {
          const text = fs.existsSync(consoleOf(names[i])) ? fs.readFileSync(consoleOf(names[i]), "utf8").replace(/\r/g, "") : "";
          if (text.startsWith(`${markers.begin}\n`) || text.includes(`\n${markers.begin}\n`)) {
            begun.add(i);
            timing.send({ event: "guest-begin", task: ctx.task, vm: i });
          }
        }
        if (v.job.state === "done") {
          if (!begun.has(i)) timing.send({ event: "guest-begin", task: ctx.task, vm: i });
          timing.send({ event: "result", task: ctx.task, vm: i });
          results[i] = { name: names[i], state: "done", exitCode: v.job.exitCode ?? null, output: v.job.output ?? "" };
          log(`${names[i]}: job ended with exit status ${v.job.exitCode}`);
          pending.delete(i);
        } else if (v.observed.state === "failed" || v.observed.state === "exited") {
          results[i] = {
            name: names[i],
            state: "failed",
            exitCode: null,
            output: null,
            message: `${v.observed.message ?? v.observed.state}\n${v.consoleTail}`,
          };
          log(`${names[i]}: ended without a result: ${v.observed.message}`);
          pending.delete(i);
        }
      }
      if (pending.size && !cancelled) await new Promise<void>((r) => ((wake = r), setTimeout(r, 100)));
    }
    for (const i of pending) {
      results[i] = cancelled
        ? { name: names[i], state: "cancelled", exitCode: null, output: null, message: "the job was cancelled" }
        : { name: names[i], state: "timeout", exitCode: null, output: null, message: `no result within ${spec.timeoutSeconds} s` };
    }
  } catch (err) {
    errors.push((err as Error).message);
  } finally {
    if (agent) {
      // Through the driver: ACPI power-down within stopGraceSeconds, then QMP quit, SIGKILL only as the last resort; then removed.
      const t0 = Date.now();
      try {
        await agent.powerOffAll();
        log(`clean stop: ${names.length} guest(s) powered down through the driver and removed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      } catch (err) {
        errors.push(`powering down: ${(err as Error).message}`);
      }
    }
    timing.send({ event: cancelled ? "cancelled" : "stopped", task: ctx.task });
    lock?.close();
    // Nothing of the slot stays: its directory goes only once every VM is gone (else it is kept for a retry, and said so).
    if (!errors.some((e) => e.startsWith("powering down"))) fs.rmSync(stateDir, { recursive: true, force: true });
    else errors.push(`state kept in ${stateDir}`);
    await timing.close();
  }
  if (errors.length) throw new Error(`VM job ${ctx.jobId} task ${ctx.task} on ${ctx.node}: ${errors.join("; ")}`);
  return { jobId: ctx.jobId, task: ctx.task, node: ctx.node, cancelled, vms: results };
}

/** Marks the runner's one result line on its stdout among whatever else a job step prints. */
export const RESULT_PREFIX = "vse-job-result ";

/** Reads a task's result line from its output file; undefined when the task wrote none. */
export function readTaskResult(text: string): VmJobTaskResult | undefined {
  const line = text
    .split("\n")
    .reverse()
    .find((l) => l.startsWith(RESULT_PREFIX));
  return line ? (JSON.parse(line.slice(RESULT_PREFIX.length)) as VmJobTaskResult) : undefined;
}

export { sleep };
