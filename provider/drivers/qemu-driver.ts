import * as fs from "fs";
import * as path from "path";
import type { RenderInput } from "../render/render";
import { writeFileAtomic } from "../agent/state";
import {
  binaryOnPath,
  Driver,
  DriverOps,
  ExitStatus,
  OpenOptions,
  renderFor,
  requireAvailable,
  Requirement,
  RunningVm,
  StartOptions,
  VmInstance,
  VmStatus,
} from "./driver";
import {
  ConfigFacts,
  configVmName,
  defaultImageResolver,
  isWarm,
  parseQemuConfig,
  ImageResolver,
  isQemuFor,
  processArgv,
  QEMU_BINARY,
  qemuArgs,
  qemuFacts,
  startQemu,
  stopQemu,
  VmPaths,
  vmPaths,
  waitForQmp,
} from "./qemu";
import { qmpCommand } from "./qmp";
import { fileRestoreUri, handIdentity, restoreUri, resumeRestored, saveSnapshot, saveState, waitForReady } from "./qemu-warm";
import { HandedJob, identityLine, markersFor, readyMarker } from "../image/busybox";

const requirements: Requirement[] = [binaryOnPath(QEMU_BINARY, "qemu-system-x86")];

const CONFIG_FILE = "vm.args";
/** A warm VM's job (VmInstance.job), kept beside its config for every start. */
const JOB_FILE = "job.json";
/** How a VM's process came up (warm: restored from a snapshot; cold: booted; migrated; checkpoint), for an agent that finds it after a restart. */
const LAUNCH_FILE = "launch";
/** The QOM id of a VM's migration TLS credentials (agent-owned; a config cannot add objects). */
const MIGRATION_TLS_ID = "vse-migrate-tls";

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * The live QEMU of a VM, found the way a restarted agent must find it: by its
 * pidfile path and VM name together, never by a pid alone. First the pid the
 * pidfile names, accepted only when that process is a QEMU started with this
 * very pidfile and name (a reused pid fails both checks); then, for a QEMU
 * spawned so recently that it has not written its pidfile yet, a look through
 * /proc for one started with them.
 */
export function qemuFromPidfile(pidfile: string, name: string): number | undefined {
  const startedWith = (pid: number) => {
    try {
      const argv = processArgv(pid);
      return argv[argv.indexOf("-pidfile") + 1] === pidfile && isQemuFor(pid, name);
    } catch {
      return false;
    }
  };
  try {
    const pid = Number(fs.readFileSync(pidfile, "utf8").trim());
    if (pid > 0 && startedWith(pid)) return pid;
  } catch {
    // no pidfile yet, or gone
  }
  for (const e of fs.readdirSync("/proc")) {
    if (/^[0-9]+$/.test(e) && startedWith(Number(e))) return Number(e);
  }
  return undefined;
}

/** QEMU through the functions in qemu.ts, plus QMP for pause, resume, facts and migration. The node agent's road to QEMU. */
class QemuOps implements DriverOps {
  /** Warm VMs this driver has handed (or is handing) their identity and job. */
  private readonly handing = new Set<string>();

  constructor(
    private readonly stateDir: string,
    private readonly resolveImage: ImageResolver,
    private readonly snapshotDir?: string,
    private readonly hostAddress?: string,
    private readonly migrationTlsDir?: string,
  ) {}

  /** A migration over TCP (between hosts) runs only under TLS with the cluster's credentials; returns them, or throws. */
  private tlsFor(uri: string): { dir: string; address: string } | undefined {
    const m = /^tcp:([0-9.]+):([0-9]{1,5})$/.exec(uri);
    if (!m) {
      if (/^unix:\//.test(uri)) return undefined;
      throw new Error(`qemu: migration URI ${JSON.stringify(uri)}: expected unix:<path> or tcp:<IPv4 address>:<port>`);
    }
    if (!this.migrationTlsDir) throw new Error(`qemu: migration over ${uri} needs TLS credentials (this host has none); never in the clear between hosts`);
    return { dir: this.migrationTlsDir, address: m[1] };
  }

  /** Adds the TLS credentials object for one side of a migration (idempotent: a left-over one of an earlier attempt is replaced). */
  private async addTlsCreds(p: VmPaths, dir: string, endpoint: "server" | "client"): Promise<void> {
    await qmpCommand(p.qmp, "object-del", { id: MIGRATION_TLS_ID }).catch(() => undefined);
    // verify-peer on both ends: the target accepts only a source holding a certificate of the cluster's CA.
    // Loading the credentials reads and checks every file: on a loaded host that can take longer than QMP's usual 3 s.
    await qmpCommand(p.qmp, "object-add", { "qom-type": "tls-creds-x509", id: MIGRATION_TLS_ID, dir, endpoint, "verify-peer": true }, 30000);
  }

  private paths(name: string): VmPaths {
    if (!/^[a-z]([a-z0-9-]*[a-z0-9])?$/.test(name)) throw new Error(`VM name ${JSON.stringify(name)} is not a valid name`);
    return vmPaths(path.join(this.stateDir, name));
  }

  private config(name: string): string {
    const file = path.join(this.paths(name).dir, CONFIG_FILE);
    if (!fs.existsSync(file)) throw new Error(`qemu: VM ${name} was not created on this host`);
    return fs.readFileSync(file, "utf8");
  }

  /** The pid of the VM's live QEMU, if there is one. */
  private pid(name: string): number | undefined {
    return qemuFromPidfile(this.paths(name).pidfile, name);
  }

  async create(vm: VmInstance): Promise<void> {
    const p = this.paths(vm.name);
    qemuArgs(vm.config, p, this.resolveImage, this.hostAddress); // refuse a bad config or a missing image now, not at start
    // The driver finds its process by -name; a config naming another VM would run unseen.
    if (configVmName(vm.config) !== vm.name) throw new Error(`qemu: config of VM ${vm.name} names "${configVmName(vm.config)}" in -name`);
    // A warm image has no job of its own: without one to hand over, its guest would wait for ever.
    if (isWarm(parseQemuConfig(vm.config).facts) && !vm.job)
      throw new Error(`qemu: VM ${vm.name} is of a warm image: its job (spec.job) is handed to the guest after the restore, and none was given`);
    fs.mkdirSync(p.dir, { recursive: true });
    writeFileAtomic(path.join(p.dir, CONFIG_FILE), vm.config);
    if (vm.job) writeFileAtomic(path.join(p.dir, JOB_FILE), JSON.stringify(vm.job));
    else fs.rmSync(path.join(p.dir, JOB_FILE), { force: true });
  }

  async start(name: string, opts: StartOptions = {}): Promise<RunningVm> {
    const live = this.pid(name);
    // Never a second QEMU, and never the pidfile of a live one removed: the running one is the VM.
    if (live !== undefined) return { pid: live };
    const p = this.paths(name);
    const config = this.config(name);
    const { facts } = parseQemuConfig(config);
    // A warm VM restores its snapshot when the store has one; a migration target takes its state from the source, a restored checkpoint from its file.
    const warm = isWarm(facts) && !opts.incoming && !opts.restoreFile;
    const restore = warm ? restoreUri(this.snapshotDir, facts) : opts.restoreFile && !opts.incoming ? fileRestoreUri(opts.restoreFile) : undefined;
    const incoming = opts.incoming ?? restore;
    const tls = opts.incoming ? this.tlsFor(opts.incoming) : undefined;
    // A TLS target is set up over QMP before it listens: -incoming defer, then the credentials, then migrate-incoming.
    // This driver hands a warm guest its identity itself; what a later agent finds (handOverFound) says how it came up.
    this.handing.add(name);
    fs.mkdirSync(p.dir, { recursive: true });
    writeFileAtomic(path.join(p.dir, LAUNCH_FILE), opts.incoming ? "migrated" : opts.restoreFile ? "checkpoint" : restore ? "warm" : "cold");
    const child = startQemu(config, p, incoming ? ["-incoming", tls ? "defer" : incoming] : [], this.resolveImage, this.hostAddress);
    const exited = new Promise<ExitStatus>((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    let ended = false;
    void exited.then(() => (ended = true));
    const deadline = Date.now() + 10000;
    while (!fs.existsSync(p.pidfile) && !ended && Date.now() < deadline) await sleep(20);
    await waitForQmp(p.qmp, () => !ended, Math.max(0, deadline - Date.now()));
    child.unref();
    const pid = this.pid(name);
    if (ended || pid === undefined) {
      if (!ended) child.kill("SIGKILL");
      const err = fs.existsSync(p.stderr) ? fs.readFileSync(p.stderr, "utf8").trim().split("\n").slice(-3).join(" | ") : "";
      throw new Error(`qemu: VM ${name} failed to start${err ? `: ${err}` : ended ? "" : " within 10 s"}`);
    }
    if (tls) {
      try {
        await this.addTlsCreds(p, tls.dir, "server");
        await qmpCommand(p.qmp, "migrate-set-parameters", { "tls-creds": MIGRATION_TLS_ID });
        await qmpCommand(p.qmp, "migrate-incoming", { uri: opts.incoming });
      } catch (err) {
        await stopQemu(pid, name, p, 0);
        throw new Error(`qemu: VM ${name} could not listen for a migration on ${opts.incoming}: ${(err as Error).message}`);
      }
    }
    // A checkpoint holds a guest that already has its identity: it only has to run on.
    if (opts.restoreFile && !opts.incoming) {
      await resumeRestored(p);
      return { pid, exited };
    }
    if (!warm) return { pid, exited, launch: "cold" };
    if (restore) {
      await resumeRestored(p);
      this.handOver(name, facts, p);
      return { pid, exited, launch: "warm" };
    }
    this.bootThenHandOver(name, facts, p, () => !ended);
    return { pid, exited, launch: "cold" };
  }

  /** A warm VM without a snapshot boots; at its ready point it is saved for the next ones, then handed its identity and job. */
  private bootThenHandOver(name: string, facts: ConfigFacts, p: VmPaths, alive: () => boolean): void {
    void (async () => {
      if (!(await waitForReady(p, readyMarker(facts.imageId), alive, 300000))) return;
      if (this.snapshotDir && !restoreUri(this.snapshotDir, facts)) await saveSnapshot(p, this.snapshotDir, facts).catch(() => undefined);
      this.handOver(name, facts, p);
    })();
  }

  /**
   * A warm guest found running by an agent that did not start it (a restart) and whose job has not begun
   * was perhaps never handed its identity and job: they are handed (again; the guest drops a partial one).
   */
  private handOverFound(name: string, pid: number): void {
    if (this.handing.has(name)) return;
    this.handing.add(name);
    try {
      const p = this.paths(name);
      const { facts } = parseQemuConfig(this.config(name));
      if (!isWarm(facts) || !fs.existsSync(path.join(p.dir, JOB_FILE))) return;
      const printed = fs.existsSync(p.console) ? fs.readFileSync(p.console, "utf8") : "";
      if (printed.includes(markersFor(facts.imageId).begin)) return;
      // A migrated or checkpointed guest had its identity before it was saved.
      const launch = fs.existsSync(path.join(p.dir, LAUNCH_FILE)) ? fs.readFileSync(path.join(p.dir, LAUNCH_FILE), "utf8") : "";
      if (launch === "warm") this.handOver(name, facts, p);
      else if (launch === "cold") this.bootThenHandOver(name, facts, p, () => this.pid(name) === pid);
    } catch {
      // Finding the process is what recover is for; a VM that cannot be handed over shows it in its console and job timeout.
    }
  }

  /** Hands a warm guest its name, MAC and job, in the background; a guest that never gets them shows it in its console and job timeout. */
  private handOver(name: string, facts: ConfigFacts, p: VmPaths): void {
    const begin = markersFor(facts.imageId).begin;
    const taken = () => {
      try {
        return fs.readFileSync(p.console, "utf8").includes(begin);
      } catch {
        return false;
      }
    };
    const job = JSON.parse(fs.readFileSync(path.join(p.dir, JOB_FILE), "utf8")) as HandedJob;
    handIdentity(p, identityLine(name, facts.nics[0]?.mac, job), taken).catch(() => undefined);
  }

  async recover(name: string): Promise<RunningVm | undefined> {
    const pid = this.pid(name);
    if (pid === undefined) return undefined;
    this.handOverFound(name, pid);
    return { pid };
  }

  async stop(name: string, graceMs: number): Promise<void> {
    const pid = this.pid(name);
    if (pid !== undefined) await stopQemu(pid, name, this.paths(name), graceMs);
  }

  async pause(name: string): Promise<void> {
    await qmpCommand(this.paths(name).qmp, "stop");
  }

  async resume(name: string): Promise<void> {
    await qmpCommand(this.paths(name).qmp, "cont");
  }

  async status(name: string): Promise<VmStatus> {
    const p = this.paths(name);
    if (!fs.existsSync(path.join(p.dir, CONFIG_FILE))) return { state: "absent", detail: "not created" };
    if (this.pid(name) === undefined) return { state: "stopped", detail: "no QEMU process" };
    const facts = await qemuFacts(p);
    const state = facts.status === "running" ? "running" : facts.status === "paused" ? "paused" : facts.status === "inmigrate" ? "paused" : "other";
    return { state, detail: facts.status, memoryMiB: facts.memoryMiB, vcpus: facts.vcpus };
  }

  async destroy(name: string): Promise<void> {
    await this.stop(name, 0);
    if (this.pid(name) !== undefined) throw new Error(`qemu: VM ${name} is still running after a forced stop`);
    fs.rmSync(this.paths(name).dir, { recursive: true, force: true });
  }

  async saveState(name: string, file: string): Promise<void> {
    if (this.pid(name) === undefined) throw new Error(`qemu: VM ${name} is not running`);
    await saveState(this.paths(name), file);
  }

  /** Live migration to a QEMU started with StartOptions.incoming = targetUri; resolves when the source has handed over and quit. */
  async migrate(name: string, targetUri: string): Promise<{ totalMs: number; downtimeMs: number }> {
    const p = this.paths(name);
    const tls = this.tlsFor(targetUri);
    if (tls) {
      await this.addTlsCreds(p, tls.dir, "client");
      // The target must present a certificate of the cluster's CA naming the very address dialled.
      await qmpCommand(p.qmp, "migrate-set-parameters", { "tls-creds": MIGRATION_TLS_ID, "tls-hostname": tls.address });
    } else {
      await qmpCommand(p.qmp, "migrate-set-parameters", { "tls-creds": "" });
    }
    await qmpCommand(p.qmp, "migrate", { uri: targetUri });
    const deadline = Date.now() + 120000;
    for (;;) {
      const info = (await qmpCommand(p.qmp, "query-migrate")) as { status?: string; "error-desc"?: string; "total-time"?: number; downtime?: number };
      if (info.status === "completed") {
        // The source is paused after handing over; it must not be resumed, only ended.
        await this.stop(name, 0);
        return { totalMs: info["total-time"] ?? 0, downtimeMs: info.downtime ?? 0 };
      }
      if (info.status === "failed" || info.status === "cancelled") {
        await this.keepRunning(p);
        throw new Error(`qemu: migration of ${name} ${info.status}: ${info["error-desc"] ?? ""}`);
      }
      if (Date.now() > deadline) {
        await qmpCommand(p.qmp, "migrate_cancel").catch(() => undefined);
        await this.keepRunning(p);
        throw new Error(`qemu: migration of ${name} did not complete within 120 s`);
      }
      await sleep(100);
    }
  }

  /** After a failed migration the source is the only copy: make sure it runs on. */
  private async keepRunning(p: VmPaths): Promise<void> {
    const st = (await qmpCommand(p.qmp, "query-status").catch(() => undefined)) as { status?: string } | undefined;
    if (st?.status && st.status !== "running") await qmpCommand(p.qmp, "cont").catch(() => undefined);
  }
}

export const qemuDriver: Driver = {
  name: "qemu",
  title: "QEMU (TCG; KVM when a probe boot works)",
  template: "qemu/vm.args.hbs",
  capabilities: { run: true, pause: true, resume: true, gracefulStop: true, migrate: true, liveFacts: true, liveMemory: false, directKernelBoot: true },
  notes: [
    "Control through QMP; graceful stop is ACPI power-down, then QMP quit, then SIGKILL.",
    "Migration: the target starts with -incoming, the source runs QMP migrate.",
    "Cluster network: QEMU's socket backend in multicast mode, bound to the host's address (127.0.0.1 on this machine; TTL 1, the hosts' link).",
    "Migration between hosts: TCP on the target host's address, TLS both ways with the cluster CA's certificates (tls-creds-x509).",
  ],
  requirements,
  render: (input: RenderInput) => renderFor("qemu", input),
  async open(opts: OpenOptions): Promise<DriverOps> {
    await requireAvailable("qemu", requirements);
    fs.mkdirSync(opts.stateDir, { recursive: true });
    return new QemuOps(opts.stateDir, opts.resolveImage ?? defaultImageResolver(), opts.snapshotDir, opts.hostAddress, opts.migrationTlsDir);
  },
};
