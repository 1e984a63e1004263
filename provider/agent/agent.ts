import * as fs from "fs";
import * as path from "path";
import type { ConfigFacts } from "../drivers/qemu";
import type { DriverOps, ExitStatus, RunningVm } from "../drivers/driver";
import type { SitePolicy } from "../model/types.generated";
import type { RuleViolation } from "../model/policy";
import { LOOPBACK_HOST_ADDRESS } from "../drivers/network";
import { ImageNotFound, ImageStore, snapshotRootOf } from "./image-store";
import { AgentRefusal, JobResult, VmObserved, VmSpec, VmView } from "./protocol";
import { readJson, writeFileAtomic } from "./state";
import { Accounting } from "./accounting";
import { CHECKPOINT_SAVING, prepareRestore, RESTORED_CONSOLE } from "./checkpoint";
import { freePort } from "./ports";

/** What one agent serves: its cluster, its image store, the site's policy. */
export interface AgentOptions {
  stateDir: string;
  /** The cluster's key (provider/drivers/network.ts clusterKey): names, MACs and the network derive from it. */
  clusterKey: string;
  images: ImageStore;
  /** The site policy in force, read anew for every request (the site may change it while agents run). */
  policy: () => SitePolicy;
  log?: (msg: string) => void;
  /** Opens a driver; tests and production use the same drivers, this only lets a test count calls. */
  openDriver?: (hypervisor: string, stateDir: string) => Promise<DriverOps>;
  /** Benchmark only (main.ts --standin-guests): QEMU VMs, checked as ever, run as stand-in processes (drivers/standin.ts). */
  standinGuests?: boolean;
  /** The host's address (main.ts --listen): its VMs' NICs are bound to it, and nothing else. Default 127.0.0.1 (an agent of this machine). */
  hostAddress?: string;
  /**
   * An agent serving over TLS (--listen): its port (a cluster's agents share one), the host's certificate (chain: the host's, then the
   * cluster CA's), key and the cluster's token. Live migration between hosts runs over TCP with TLS from these, and the source asks the
   * target's agent (pinned to the CA) what it announced before it sends anything.
   */
  tls?: { port: number; certFile: string; keyFile: string; token: string };
}

interface Entry {
  name: string;
  spec: VmSpec;
  /** What the admitted config asks for (memory for the per-agent cap), parsed once. */
  facts?: ConfigFacts;
  observed: VmObserved;
  /** The process as started or re-attached by this agent process. */
  run?: RunningVm;
  /** Set while the agent itself stops the VM, so the exit is not reported as a failure. */
  stopping?: boolean;
}

interface PersistedState {
  vms: { name: string; spec: VmSpec; observed: VmObserved }[];
}

/** The console is read from its tail only: a job's result sits at its end, and a chatty guest cannot make the agent read gigabytes. */
export const CONSOLE_TAIL_BYTES = 256 * 1024;

/** Parses the job's result out of the serial console text. */
export function parseJob(consoleText: string, markers: { begin: string; end: string }): JobResult {
  const text = consoleText.replace(/\r/g, "");
  const b = text.lastIndexOf(`\n${markers.begin}\n`);
  const start = b >= 0 ? b + 1 : text.startsWith(`${markers.begin}\n`) ? 0 : -1;
  if (start < 0) return { state: "waiting" };
  const body = text.slice(start + markers.begin.length + 1);
  const endRe = new RegExp(`(^|\\n)${markers.end.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} status=(\\d+)==\\n`);
  const m = endRe.exec(body);
  if (!m) return { state: "waiting" };
  return { state: "done", exitCode: Number(m[2]), output: body.slice(0, m.index + m[1].length) };
}

/** The last bytes of a file, never more than limit. */
export function readTail(file: string, limit = CONSOLE_TAIL_BYTES): string {
  try {
    const fd = fs.openSync(file, "r");
    try {
      const size = fs.fstatSync(fd).size;
      const len = Math.min(size, limit);
      const buf = Buffer.alloc(len);
      fs.readSync(fd, buf, 0, len, size - len);
      return buf.toString("utf8");
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return "";
  }
}

async function defaultOpenDriver(hypervisor: string, stateDir: string, o: AgentOptions): Promise<DriverOps> {
  const resolveImage = (id: string, file: "vmlinuz" | "initrd.img") => o.images.resolve(id, file);
  if (hypervisor === "qemu" && o.standinGuests) {
    const { standinDriver } = require("../drivers/standin") as typeof import("../drivers/standin");
    return standinDriver.open({ stateDir, resolveImage });
  }
  if (hypervisor === "qemu") {
    const { qemuDriver } = require("../drivers/qemu-driver") as typeof import("../drivers/qemu-driver");
    // Warm-launch snapshots sit beside the images in the host's store.
    return qemuDriver.open({
      stateDir,
      resolveImage,
      snapshotDir: snapshotRootOf(o.images.root),
      hostAddress: o.hostAddress,
      migrationTlsDir: o.tls ? migrationTlsDir(o.stateDir, o.tls) : undefined,
    });
  }
  if (hypervisor === "libvirt") {
    const { libvirtDriver } = require("../drivers/libvirt") as typeof import("../drivers/libvirt");
    return libvirtDriver.open({ stateDir, resolveImage, domainPrefix: domainPrefix(o.clusterKey) });
  }
  throw new AgentRefusal(400, `hypervisor: a node agent runs "qemu" or "libvirt", found ${JSON.stringify(hypervisor)}`);
}

/** The PEM certificates in a file, in order. */
function pemBlocks(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n?/g) ?? [];
}

/**
 * RFC 7919's ffdhe2048 group (`openssl genpkey -genparam -algorithm DH -pkeyopt group:ffdhe2048`): without a
 * dh-params.pem QEMU generates 2048-bit DH parameters when the server credentials load, which takes seconds to
 * minutes on a busy host. The handshake is TLS 1.3 with ECDHE anyway; the file only spares that generation.
 */
const FFDHE2048_PEM = [
  "-----BEGIN DH PARAMETERS-----",
  "MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz",
  "+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a",
  "87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7",
  "YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi",
  "7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD",
  "ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==",
  "-----END DH PARAMETERS-----",
  "",
].join("\n");

/**
 * QEMU's tls-creds-x509 directory for live migration, made from the host's
 * agent certificate (serverAuth and clientAuth, allocation/tls.ts): the same
 * certificate serves as the target's server and the source's client one, the
 * cluster's CA as the only trusted root. Written into the agent's private
 * state (0700; keys 0600) each time the agent starts.
 */
function migrationTlsDir(stateDir: string, tls: NonNullable<AgentOptions["tls"]>): string {
  const dir = path.join(stateDir, "migrate-tls");
  const chain = pemBlocks(fs.readFileSync(tls.certFile, "utf8"));
  if (chain.length < 2) throw new Error(`${tls.certFile}: expected the host's certificate followed by the cluster CA's`);
  const key = fs.readFileSync(tls.keyFile, "utf8");
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileAtomic(path.join(dir, "ca-cert.pem"), chain[chain.length - 1], 0o644);
  writeFileAtomic(path.join(dir, "dh-params.pem"), FFDHE2048_PEM, 0o644);
  for (const side of ["server", "client"]) {
    writeFileAtomic(path.join(dir, `${side}-cert.pem`), chain[0], 0o644);
    writeFileAtomic(path.join(dir, `${side}-key.pem`), key, 0o600);
  }
  return dir;
}

/** The cluster CA of an agent serving over TLS: the last certificate of its chain file. */
function clusterCaOf(tls: NonNullable<AgentOptions["tls"]>): string {
  const chain = pemBlocks(fs.readFileSync(tls.certFile, "utf8"));
  return chain[chain.length - 1];
}

/** libvirt domains are host-global: they carry the cluster key, so two stacks never touch each other's VMs. */
export function domainPrefix(clusterKey: string): string {
  return `vse-${clusterKey}-`;
}

/**
 * The node agent's core: the site's trust boundary on a host. It admits a VM
 * only when its config is inside the driver's allowlist, boots images of its
 * own store, and fits the site policy; it then keeps the VM in its desired
 * state through the V2M driver contract, the one road to a hypervisor. It
 * records every intent before acting, so a restarted agent re-attaches to the
 * processes it started instead of starting duplicates.
 */
export class Agent {
  private vms = new Map<string, Entry>();
  private queues = new Map<string, Promise<unknown>>();
  private drivers = new Map<string, Promise<DriverOps>>();
  private watcher?: NodeJS.Timeout;
  private retry?: NodeJS.Timeout;
  private readonly stateFile: string;
  private readonly vmsDir: string;
  private readonly log: (msg: string) => void;
  /** Why the last write of the state failed, until a retry succeeds; reported by /healthz and in the log. */
  persistError?: string;
  /** Bumped with every change of the VMs' state: heartbeats carry it, so the agents watching this one re-fetch replica() (agent/heartbeat.ts). */
  version = 0;
  /** CPU, memory and wall time per VM process, kept after the VM ends (agent/accounting.ts). */
  readonly accounting: Accounting;

  constructor(private readonly o: AgentOptions) {
    this.stateFile = path.join(o.stateDir, "state.json");
    this.vmsDir = path.join(o.stateDir, "vms");
    this.log = o.log ?? (() => undefined);
    this.accounting = new Accounting(o.stateDir);
  }

  /** Where checkpoints live: the host's store, beside its images (agent/checkpoint.ts). */
  get checkpointDir(): string {
    return path.join(path.dirname(this.o.images.root), "checkpoints");
  }

  /**
   * Runs op on one VM in its queue (never beside a put, migrate or delete of it),
   * with its driver; for agent/checkpoint.ts, which must not reach QEMU but through the driver.
   */
  withVm<T>(
    name: string,
    op: (vm: { name: string; spec: VmSpec; observed: VmObserved; dir: string; running: boolean }, ops: DriverOps) => Promise<T>,
  ): Promise<T> {
    return this.serial(name, async () => {
      const e = this.vms.get(name);
      if (!e) throw new AgentRefusal(404, `not found: no VM named ${name}`);
      const ops = await this.driver(e.spec.hypervisor);
      const result = await op({ name, spec: e.spec, observed: { ...e.observed }, dir: path.join(this.vmsDir, name), running: await this.isRunning(e) }, ops);
      // The op may have paused and resumed the guest: it is left as its spec asks.
      await this.applyRunState(e);
      return result;
    });
  }

  /** The admitted config's facts, parsed once; undefined for a config this agent would no longer admit. */
  private factsFor(e: Entry): ConfigFacts | undefined {
    try {
      return (e.facts ??= this.facts(e.name, e.spec));
    } catch {
      return undefined;
    }
  }

  /** Pauses or resumes a started VM, through its driver, as its spec's state asks (default running). */
  private async applyRunState(e: Entry): Promise<void> {
    if (!e.run || e.observed.incoming || (e.observed.state !== "running" && e.observed.state !== "paused")) return;
    const want = e.spec.state === "paused" ? "paused" : "running";
    const ops = await this.driver(e.spec.hypervisor);
    const now = (await ops.status(e.name)).state;
    if (want === "paused" && now !== "paused") await ops.pause(e.name);
    if (want === "running" && now !== "running") await ops.resume(e.name);
    if (e.observed.state !== want) {
      this.accounting.sample(e.name);
      e.observed = { ...e.observed, state: want, message: want === "paused" ? "paused" : e.observed.message === "paused" ? "resumed" : e.observed.message };
      this.log(`VM ${e.name} ${want === "paused" ? "paused" : "resumed"} (pid ${e.run.pid})`);
      this.persist();
    }
  }

  get stateDir(): string {
    return this.o.stateDir;
  }

  private driver(hypervisor: string): Promise<DriverOps> {
    let d = this.drivers.get(hypervisor);
    if (!d) {
      d = (this.o.openDriver ?? ((h, s) => defaultOpenDriver(h, s, this.o)))(hypervisor, this.vmsDir);
      this.drivers.set(hypervisor, d);
      d.catch(() => this.drivers.delete(hypervisor));
    }
    return d;
  }

  /** Loads persisted state and re-attaches to every VM whose process still runs, through its driver's recover. */
  async load(): Promise<void> {
    fs.mkdirSync(this.vmsDir, { recursive: true });
    const saved = readJson<PersistedState>(this.stateFile);
    for (const v of saved?.vms ?? []) {
      const e: Entry = { ...v };
      this.vms.set(e.name, e);
      let run: RunningVm | undefined;
      try {
        run = await (await this.driver(e.spec.hypervisor)).recover(e.name);
      } catch (err) {
        this.log(`VM ${e.name}: could not look for its process: ${(err as Error).message}`);
      }
      let detail = run ? await this.runDetail(e) : undefined;
      if (run && detail === "postmigrate" && fs.existsSync(path.join(this.vmsDir, e.name, CHECKPOINT_SAVING))) {
        // Stopped by a checkpoint save the agent did not live to finish: the VM never left, it runs on.
        await (await this.driver(e.spec.hypervisor)).resume(e.name).catch((err: Error) => this.log(`VM ${e.name}: ${err.message}`));
        fs.rmSync(path.join(this.vmsDir, e.name, CHECKPOINT_SAVING), { force: true });
        detail = await this.runDetail(e);
      }
      if (run && detail === "postmigrate") {
        // This copy handed the VM over to its migration target before the agent died: the VM lives there now.
        this.log(`VM ${e.name}: found a copy that had already migrated away (pid ${run.pid}); removing it`);
        e.run = run;
        await this.remove(e).catch((err: Error) => this.log(`VM ${e.name}: ${err.message}`));
        continue;
      }
      if (run) {
        e.run = run;
        // A QEMU still waiting for a migration is a target, whatever the agent had recorded before it died.
        const incoming = detail === "inmigrate" ? (e.observed.incoming ?? `unix:${path.join(this.vmsDir, e.name, "migrate.sock")}`) : undefined;
        e.observed = {
          ...e.observed,
          state: detail === "paused" && !incoming ? "paused" : "running",
          pid: run.pid,
          incoming,
          message: "re-attached after an agent restart",
        };
        this.accounting.started(e.name, run.pid, e.observed.startedAt, this.factsFor(e));
        this.log(`re-attached VM ${e.name} (pid ${run.pid}${e.observed.state === "paused" ? ", paused" : ""})`);
      } else if (e.observed.state === "running" || e.observed.state === "paused" || e.observed.state === "starting") {
        e.observed = {
          ...e.observed,
          state: "failed",
          pid: undefined,
          lastExit: { at: new Date().toISOString(), code: null, signal: null, expected: false },
          message:
            e.observed.state === "starting" ? "the agent ended while starting the VM; it never came up" : "the VM's process ended while the agent was down",
        };
      }
    }
    this.persist();
    // Re-attached processes are not our children: poll them.
    this.watcher = setInterval(() => void this.pollAdopted(), 500);
    this.watcher.unref();
  }

  /** The hypervisor's own word for a running VM's state (QEMU: running, paused, inmigrate, postmigrate). */
  private async runDetail(e: Entry): Promise<string | undefined> {
    try {
      return (await (await this.driver(e.spec.hypervisor)).status(e.name)).detail;
    } catch {
      return undefined;
    }
  }

  close(): void {
    if (this.watcher) clearInterval(this.watcher);
    if (this.retry) clearTimeout(this.retry);
    this.accounting.close();
  }

  private serialize(): string {
    const data: PersistedState = { vms: [...this.vms.values()].map(({ name, spec, observed }) => ({ name, spec, observed })) };
    return JSON.stringify(data, null, 2);
  }

  /**
   * Writes the state; a failure (ENOSPC, EMFILE, EIO) is logged, reported by
   * /healthz and retried every second, never thrown at whoever changed a VM.
   */
  private persist(): void {
    this.version++;
    try {
      writeFileAtomic(this.stateFile, this.serialize());
      if (this.persistError) this.log(`state written again after: ${this.persistError}`);
      this.persistError = undefined;
    } catch (err) {
      const first = !this.persistError;
      this.persistError = `cannot write ${this.stateFile}: ${(err as Error).message}`;
      if (first) this.log(this.persistError);
      if (!this.retry) {
        this.retry = setTimeout(() => {
          this.retry = undefined;
          this.persist();
        }, 1000);
        this.retry.unref();
      }
    }
  }

  /** Records an intent before acting on it; when it cannot be recorded, nothing is done (a crash then could not be recovered from). */
  private recordIntent(): void {
    this.persist();
    if (this.persistError) throw new AgentRefusal(503, `${this.persistError}; nothing was started or changed`);
  }

  /** Runs operations on one VM one at a time. */
  private serial<T>(name: string, op: () => Promise<T>): Promise<T> {
    const prev = this.queues.get(name) ?? Promise.resolve();
    const next = prev.then(op, op);
    this.queues.set(
      name,
      next.catch(() => undefined),
    );
    return next;
  }

  private async pollAdopted(): Promise<void> {
    for (const e of this.vms.values()) {
      if (!e.run || e.run.exited || e.stopping || (e.observed.state !== "running" && e.observed.state !== "paused")) continue;
      const run = e.run;
      const now = await (await this.driver(e.spec.hypervisor)).recover(e.name).catch(() => run);
      if (!now && e.run === run) this.onExit(e, { code: null, signal: null });
    }
  }

  private onExit(e: Entry, status: ExitStatus): void {
    const expected = !!e.stopping;
    const job = this.job(e);
    // A process that was not our child (re-attached, or libvirt's) ends with no status we can read:
    // then the job's result and its declared power-off tell a clean end from a crash.
    const unknownStatus = status.code === null && status.signal === null;
    const clean = job.state === "done" && (status.code === 0 || (unknownStatus && e.spec.afterJob === "power-off"));
    e.run = undefined;
    e.observed = {
      ...e.observed,
      state: expected ? "stopped" : clean ? "exited" : "failed",
      pid: undefined,
      incoming: undefined,
      lastExit: { at: new Date().toISOString(), ...status, expected },
      message: expected
        ? "stopped by the agent"
        : clean
          ? "the guest powered off after its job"
          : `the VM's process ended unexpectedly (${status.signal ? `signal ${status.signal}` : `exit code ${status.code ?? "unknown"}`})`,
    };
    if (!expected) this.log(`VM ${e.name}: ${e.observed.message}`);
    this.accounting.ended(e.name, e.observed.lastExit!.at);
    this.persist();
  }

  private watch(e: Entry, run: RunningVm): void {
    e.run = run;
    this.accounting.started(e.name, run.pid, e.observed.startedAt, this.factsFor(e));
    run.exited?.then((st) => {
      if (e.run === run) this.onExit(e, st);
    });
  }

  /** Parses the config through its driver's allowlist; a refusal names the line, the option and what is allowed. */
  private facts(name: string, spec: VmSpec): ConfigFacts {
    const { parseQemuConfig, ConfigRefused } = require("../drivers/qemu") as typeof import("../drivers/qemu");
    const { parseLibvirtDomain } = require("../drivers/libvirt") as typeof import("../drivers/libvirt");
    let facts: ConfigFacts;
    // The cluster network and MACs are this cluster's own, and NICs are bound to this host's address only: a config may not join another cluster's segment.
    const ctx = { clusterKey: this.o.clusterKey, hostAddress: this.o.hostAddress ?? LOOPBACK_HOST_ADDRESS };
    try {
      facts = spec.hypervisor === "libvirt" ? parseLibvirtDomain(spec.config, ctx).facts : parseQemuConfig(spec.config, ctx).facts;
    } catch (err) {
      if (err instanceof ConfigRefused) throw new AgentRefusal(403, err.message);
      throw new AgentRefusal(400, `config: ${(err as Error).message}`);
    }
    const expectedName = spec.hypervisor === "libvirt" ? `${domainPrefix(this.o.clusterKey)}${name}` : name;
    if (facts.name !== expectedName) {
      throw new AgentRefusal(
        403,
        `config: the VM must be named "${expectedName}" (${spec.hypervisor === "libvirt" ? "<name>" : "-name"}), found "${facts.name}"`,
      );
    }
    return facts;
  }

  /** The site policy's verdict on a VM: 403 naming the rule and the field, or nothing. */
  private admit(name: string, spec: VmSpec, facts: ConfigFacts): void {
    let meta;
    try {
      meta = this.o.images.meta(facts.imageId);
    } catch (err) {
      if (err instanceof ImageNotFound) throw new AgentRefusal(403, `config: ${err.message}`);
      throw err;
    }
    // Loaded on first use: the model's policy module brings the definitions' parsers (ajv, yaml), which an agent
    // that never admits a VM (a benchmark's thousand) need not load, and a process start need not wait for.
    const { agentLoadViolations, violationMessage, vmRuleViolations } = require("../model/policy") as typeof import("../model/policy");
    const policy = this.o.policy();
    const violations: RuleViolation[] = vmRuleViolations(policy, {
      vm: name,
      hypervisor: spec.hypervisor,
      memoryMiB: facts.memoryMiB,
      vcpus: facts.vcpus,
      base: meta.base,
      mirror: meta.mirror,
      kernelArgs: facts.kernelArgs.split(" ").filter(Boolean),
      kernelRelease: meta.kernel === undefined ? undefined : () => meta.kernel!,
    });
    // Per-agent caps count every other VM this agent runs or is starting.
    const others = [...this.vms.values()].filter(
      (e) => e.name !== name && (e.observed.state === "running" || e.observed.state === "paused" || e.observed.state === "starting"),
    );
    const memoryOf = (e: Entry) => {
      try {
        e.facts ??= this.facts(e.name, e.spec);
        return e.facts.memoryMiB;
      } catch {
        return 0;
      }
    };
    violations.push(...agentLoadViolations(policy, { vms: others.length + 1, memoryMiB: others.reduce((s, e) => s + memoryOf(e), facts.memoryMiB) }));
    if (violations.length) {
      const fields: Record<RuleViolation["field"], string> = {
        memory: "memory (-m)",
        vcpus: "vcpus (-smp)",
        hypervisor: "hypervisor",
        base: "image base",
        mirror: "image mirror",
        kernelArgs: "kernel parameters (-append)",
        kernel: "image kernel",
        agent: "agent capacity",
      };
      throw new AgentRefusal(403, violations.map((v) => `${fields[v.field]}: ${violationMessage(policy, v)}`).join("; "));
    }
  }

  private async isRunning(e: Entry): Promise<boolean> {
    if (!e.run) return false;
    const now = await (await this.driver(e.spec.hypervisor)).recover(e.name).catch(() => undefined);
    return now !== undefined && now.pid === e.run.pid;
  }

  private async start(e: Entry, incoming?: string): Promise<void> {
    let ops: DriverOps;
    try {
      ops = await this.driver(e.spec.hypervisor);
    } catch (err) {
      throw new AgentRefusal(503, `VM ${e.name}: ${(err as Error).message}`);
    }
    // A checkpoint to restore is checked (its checksum, and that it was taken of a VM like this one) before anything starts.
    const restore = e.spec.restoreFrom && !incoming ? prepareRestore(this.checkpointDir, e.spec.restoreFrom, e.facts ?? this.facts(e.name, e.spec)) : undefined;
    e.stopping = false;
    e.observed = { state: "starting", startedAt: new Date().toISOString(), starts: e.observed.starts + 1, lastExit: e.observed.lastExit, incoming };
    // The intent is on disk before any process exists: a crash from here on is found again by recover().
    this.recordIntent();
    try {
      await ops.create({ name: e.name, config: e.spec.config, ...(e.spec.job ? { job: e.spec.job } : {}) });
      // The guest's console up to the checkpoint goes before the new one: the job's output began there.
      if (restore) fs.copyFileSync(restore.console, path.join(this.vmsDir, e.name, RESTORED_CONSOLE));
      else fs.rmSync(path.join(this.vmsDir, e.name, RESTORED_CONSOLE), { force: true });
      const run = await ops.start(e.name, incoming ? { incoming } : restore ? { restoreFile: restore.file } : {});
      this.watch(e, run);
      e.observed = {
        ...e.observed,
        state: "running",
        pid: run.pid,
        launch: run.launch,
        message: incoming ? "waiting for a live migration" : restore ? `restored from ${e.spec.restoreFrom}` : undefined,
        incoming,
      };
    } catch (err) {
      // Nothing of a failed start stays running.
      await ops.stop(e.name, 0).catch(() => undefined);
      e.run = undefined;
      e.observed = { ...e.observed, state: "failed", pid: undefined, message: `failed to start: ${(err as Error).message}` };
      this.persist();
      if (err instanceof AgentRefusal) throw err;
      const { ConfigRefused } = require("../drivers/qemu") as typeof import("../drivers/qemu");
      throw new AgentRefusal(err instanceof ConfigRefused ? 403 : 500, `VM ${e.name}: ${(err as Error).message}`);
    }
    this.persist();
    this.log(`VM ${e.name} started (pid ${e.observed.pid})${incoming ? `, waiting for a migration on ${incoming}` : ""}`);
  }

  private async stop(e: Entry): Promise<void> {
    const ops = await this.driver(e.spec.hypervisor);
    this.accounting.sample(e.name);
    e.stopping = true;
    const run = e.run;
    await ops.stop(e.name, e.spec.stopGraceSeconds * 1000);
    if (run?.exited) await run.exited; // the exit handler records how it ended
    if (e.run === run && run) this.onExit(e, { code: null, signal: null });
  }

  /** Makes the VM match spec: starts it, restarts it when its config changed, or leaves it be. */
  put(name: string, spec: VmSpec): Promise<VmView> {
    const facts = this.facts(name, spec);
    return this.serial(name, async () => {
      let e = this.vms.get(name);
      if (e && e.spec.hypervisor !== spec.hypervisor) {
        // Another hypervisor runs the VM now: take the old one down completely first.
        await this.remove(e);
        e = undefined;
      }
      const running = e ? await this.isRunning(e) : false;
      // A QEMU still waiting for a migration that never came is not the VM: it starts afresh.
      const waiting = !!e && running && !!e.observed.incoming && (await this.runDetail(e)) === "inmigrate";
      const changed = !e || e.spec.config !== spec.config || waiting;
      // A VM that ran its job and powered off as declared is done: a change that keeps its config must not run the job again.
      if (e && !running && !changed && e.observed.state === "exited") {
        e.spec = spec;
        this.persist();
        return this.view(e);
      }
      if (running && !changed) {
        e!.spec = spec;
        // A migration has landed here: the VM is now simply ours.
        e!.observed = { ...e!.observed, incoming: undefined, message: e!.observed.incoming ? "migrated here" : e!.observed.message };
        this.persist();
        await this.applyRunState(e!);
        return this.view(e!);
      }
      this.admit(name, spec, facts);
      if (!e) {
        e = { name, spec, observed: { state: "stopped", starts: 0 } };
        this.vms.set(name, e);
      }
      if (running) {
        this.log(`VM ${name}: config changed, restarting`);
        await this.stop(e);
      }
      e.spec = spec;
      e.facts = facts;
      try {
        await this.start(e);
      } catch (err) {
        // A VM that never ran here leaves nothing behind when its first start fails.
        if (e.observed.starts <= 1 && !e.observed.lastExit) await this.remove(e).catch(() => undefined);
        throw err;
      }
      await this.applyRunState(e);
      return this.view(e);
    });
  }

  /**
   * Starts the VM as the target of a live migration: on a unix socket inside this agent's state directory, or, for an agent
   * serving over TLS (another host), on TCP at this host's address only, under TLS with the cluster's CA (qemu-driver.ts).
   */
  incoming(name: string, spec: VmSpec): Promise<VmView> {
    if (spec.hypervisor !== "qemu")
      return Promise.reject(new AgentRefusal(400, `hypervisor: live migration needs "qemu", found ${JSON.stringify(spec.hypervisor)}`));
    const facts = this.facts(name, spec);
    return this.serial(name, async () => {
      const old = this.vms.get(name);
      if (old && (await this.isRunning(old))) throw new AgentRefusal(409, `conflict: VM ${name} already runs on this agent`);
      this.admit(name, spec, facts);
      const e: Entry = { name, spec, observed: { state: "stopped", starts: old?.observed.starts ?? 0 } };
      this.vms.set(name, e);
      try {
        const uri = this.o.tls
          ? `tcp:${this.o.hostAddress}:${await freePort(this.o.hostAddress ?? LOOPBACK_HOST_ADDRESS)}`
          : `unix:${path.join(this.vmsDir, name, "migrate.sock")}`;
        await this.start(e, uri);
      } catch (err) {
        // A target that did not come up leaves nothing behind; the VM still runs on its source.
        await this.remove(e).catch(() => undefined);
        throw err;
      }
      return this.view(e);
    });
  }

  /** Whether a migration target is a channel only the cluster's agents can use: a migrate.sock of this VM under a sibling agent's state. */
  private checkTarget(name: string, target: string): void {
    const clusterDir = path.dirname(this.o.stateDir);
    const m = /^unix:(\/.+)$/.exec(target);
    const p = m ? path.normalize(m[1]) : "";
    const rel = path.relative(clusterDir, p).split(path.sep);
    if (!m || p !== m[1] || rel.length !== 4 || !/^host-[0-9]+$/.test(rel[0]) || rel[1] !== "vms" || rel[2] !== name || rel[3] !== "migrate.sock") {
      throw new AgentRefusal(
        403,
        `target: expected unix:${clusterDir}/host-<n>/vms/${name}/migrate.sock (an agent of this cluster), found ${JSON.stringify(target)}`,
      );
    }
  }

  /**
   * A TCP target is another host's: only an agent serving over TLS migrates there, and only to the address and port the agent of
   * that host (same port as ours, pinned to the cluster's CA, which its certificate must name for that address) announces for this
   * very VM as waiting; the stream itself is TLS with the same CA (qemu-driver.ts).
   */
  private async checkRemoteTarget(name: string, target: string): Promise<void> {
    const { isHostAddress } = require("../drivers/qemu") as typeof import("../drivers/qemu");
    const m = /^tcp:([0-9.]{7,15}):([1-9][0-9]{0,4})$/.exec(target);
    const refuse = (why: string): never => {
      throw new AgentRefusal(403, `target: ${why}, found ${JSON.stringify(target)}`);
    };
    if (!this.o.tls) refuse(`this agent serves on this machine only; it migrates to unix:<cluster dir>/host-<n>/vms/${name}/migrate.sock`);
    if (!m || !isHostAddress(m[1]) || Number(m[2]) > 65535) refuse("expected tcp:<IPv4 address of a host of this cluster>:<port>");
    if (m![1] === this.o.hostAddress) refuse("a host never migrates to itself over TCP");
    const { AgentClient } = require("./client") as typeof import("./client");
    const peer = new AgentClient(`https://${m![1]}:${this.o.tls!.port}`, this.o.tls!.token, { ca: clusterCaOf(this.o.tls!) });
    let there: VmView | undefined;
    try {
      there = await peer.getVm(name);
    } catch (err) {
      refuse(`the agent of ${m![1]} could not confirm it waits for ${name} (${(err as Error).message})`);
    }
    if (!there || there.observed.state !== "running" || there.observed.incoming !== target)
      refuse(`the agent of ${m![1]} does not wait for ${name} there (it announces ${JSON.stringify(there?.observed.incoming ?? null)})`);
  }

  /** Live-migrates the running VM to a target started by incoming(); once it has landed, the VM is forgotten here. A failed migration leaves it running here. */
  async migrate(name: string, target: string): Promise<{ totalMs: number; downtimeMs: number }> {
    if (target.startsWith("tcp:")) await this.checkRemoteTarget(name, target);
    else this.checkTarget(name, target);
    return this.serial(name, async () => {
      const e = this.vms.get(name);
      if (!e) throw new AgentRefusal(404, `not found: no VM named ${name}`);
      if (e.spec.hypervisor !== "qemu" || !(await this.isRunning(e))) throw new AgentRefusal(409, `conflict: VM ${name} is not a running QEMU VM`);
      const ops = await this.driver("qemu");
      if ((await this.runDetail(e)) === "postmigrate") {
        // An earlier migration of it completed, but its target is gone (killed, or taken down as a failed
        // target by its restarted agent: the caller found the VM nowhere else). The paused state here is
        // the guest's only one: it runs on here, and this migration is a new one.
        this.log(`VM ${name}: paused after an earlier migration whose target is gone; resuming it here before migrating`);
        await ops.resume(name);
      }
      const t0 = Date.now();
      e.stopping = true; // the source ends once it has handed over
      try {
        const m = await ops.migrate!(name, target);
        this.log(`VM ${name} migrated to ${target} in ${Date.now() - t0} ms`);
        await this.remove(e);
        return { totalMs: m?.totalMs ?? Date.now() - t0, downtimeMs: m?.downtimeMs ?? 0 };
      } catch (err) {
        e.stopping = false;
        const still = await this.isRunning(e);
        this.log(`VM ${name}: migration to ${target} failed (${(err as Error).message}); ${still ? "it keeps running here" : "its process is gone"}`);
        if (!still && e.run) this.onExit(e, { code: null, signal: null });
        throw new AgentRefusal(
          502,
          `migration of ${name} to ${target} failed: ${(err as Error).message}; the VM ${still ? "keeps running on the source" : "is no longer running"}`,
        );
      }
    });
  }

  /** Stops the VM and removes every trace of it; every step runs even when an earlier one failed, and the errors are reported together. */
  private async remove(e: Entry): Promise<void> {
    const errors: string[] = [];
    // Never started here (e.g. its hypervisor could not be opened): there is nothing to destroy, only the record.
    if (e.observed.starts === 0 && !e.run) {
      this.vms.delete(e.name);
      fs.rmSync(path.join(this.vmsDir, e.name), { recursive: true, force: true });
      this.persist();
      return;
    }
    try {
      const ops = await this.driver(e.spec.hypervisor);
      e.stopping = true;
      this.accounting.sample(e.name);
      await ops.destroy(e.name).catch((err: Error) => errors.push(err.message));
      if (e.run && !(await this.isRunning(e))) e.run = undefined;
    } catch (err) {
      errors.push((err as Error).message);
    }
    if (e.run) errors.push(`its process ${e.run.pid} is still running`);
    if (errors.length) {
      this.persist();
      throw new AgentRefusal(500, `VM ${e.name}: not removed completely: ${errors.join("; ")}`);
    }
    this.accounting.ended(e.name, new Date().toISOString());
    this.vms.delete(e.name);
    fs.rmSync(path.join(this.vmsDir, e.name), { recursive: true, force: true });
    this.persist();
  }

  delete(name: string): Promise<boolean> {
    return this.serial(name, async () => {
      const e = this.vms.get(name);
      if (!e) return false;
      await this.remove(e);
      return true;
    });
  }

  /** Stops and removes every VM; tries them all, then reports what failed. */
  async shutdown(): Promise<void> {
    const results = await Promise.allSettled([...this.vms.keys()].map((n) => this.delete(n)));
    this.close();
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => (r.reason as Error).message);
    if (failed.length) throw new AgentRefusal(500, failed.join("; "));
  }

  /**
   * Powers every VM off through its driver (a clean stop: the guest is asked
   * first, within its stopGraceSeconds, then the driver's own forced stop) and
   * removes it: for an agent whose allocation ends under it (--on-term
   * stop-vms, e.g. scancel of its Slurm job). All tried, failures reported together.
   */
  async powerOffAll(): Promise<void> {
    const results = await Promise.allSettled(
      [...this.vms.keys()].map((n) =>
        this.serial(n, async () => {
          const e = this.vms.get(n);
          if (!e) return;
          if (await this.isRunning(e)) await this.stop(e);
          await this.remove(e);
        }),
      ),
    );
    this.close();
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => (r.reason as Error).message);
    if (failed.length) throw new AgentRefusal(500, failed.join("; "));
  }

  /** Every VM's spec and state, as replicated to the agents that watch this one (a recovery restarts them from it). */
  replica(): { version: number; vms: { name: string; spec: VmSpec; state: VmObserved["state"] }[] } {
    return { version: this.version, vms: [...this.vms.values()].map((e) => ({ name: e.name, spec: e.spec, state: e.observed.state })) };
  }

  get(name: string): Promise<VmView | undefined> {
    const e = this.vms.get(name);
    return e ? this.view(e) : Promise.resolve(undefined);
  }

  list(): Promise<VmView[]> {
    return Promise.all([...this.vms.values()].map((e) => this.view(e)));
  }

  /** Every driver writes a VM's serial console to console.log in the VM's directory (driver.ts OpenOptions). */
  private consoleText(e: Entry): string {
    const before = readTail(path.join(this.vmsDir, e.name, RESTORED_CONSOLE));
    return before + readTail(path.join(this.vmsDir, e.name, "console.log"));
  }

  private job(e: Entry): JobResult {
    return parseJob(this.consoleText(e), e.spec.markers);
  }

  private async view(e: Entry): Promise<VmView> {
    // A migration target stops waiting once the VM has landed, whoever saw it land.
    if (e.observed.incoming && e.run && !e.run.exited) {
      const detail = await this.runDetail(e);
      if (detail && detail !== "inmigrate") {
        e.observed = { ...e.observed, incoming: undefined, message: "migrated here" };
        this.persist();
      }
    }
    const text = this.consoleText(e);
    return {
      name: e.name,
      spec: e.spec,
      observed: { ...e.observed },
      job: parseJob(text, e.spec.markers),
      consoleTail: text.replace(/\r/g, "").split("\n").slice(-20).join("\n"),
    };
  }
}
