import * as fs from "fs";
import * as path from "path";
import type { ChildProcess } from "child_process";
import type { DriverOps } from "../drivers/driver";
import { isQemuFor, startQemu, stopQemu, vmPaths, configVmName, parseQemuConfig, waitForQmp } from "../drivers/qemu";
import { JobResult, VmObserved, VmSpec, VmView } from "./protocol";
import { qmpCommand } from "../drivers/qmp";
import * as net from "net";

/** A free TCP port on 127.0.0.1, for a migration target to listen on. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}
import { readJson, writeFileAtomic } from "./state";

interface Entry {
  name: string;
  spec: VmSpec;
  observed: VmObserved;
  child?: ChildProcess;
  /** Set while the agent itself stops the VM, so the exit is not reported as a failure. */
  stopping?: boolean;
}

interface PersistedState {
  vms: { name: string; spec: VmSpec; observed: VmObserved }[];
}

const CONSOLE_READ_LIMIT = 8 * 1024 * 1024;
/** Where libvirtd writes the pid of a domain's QEMU. */
const LIBVIRT_PID_DIR = "/var/run/libvirt/qemu";

/** The serial console file a libvirt domain's XML names (templates/libvirt/domain.xml.hbs). */
export function libvirtConsolePath(xml: string): string | undefined {
  return /<serial type='file'>\s*<source path='([^']+)'/.exec(xml)?.[1];
}

/** Checks a config before anything is touched; returns the problem, naming the field. */
function checkConfig(name: string, spec: VmSpec): string | undefined {
  if (spec.hypervisor === "libvirt") {
    const named = /<name>([^<]*)<\/name>/.exec(spec.config)?.[1];
    if (named !== name) return `config: the domain's <name> must be the VM name "${name}", found ${JSON.stringify(named ?? null)}`;
    const console = libvirtConsolePath(spec.config);
    if (!console || !path.isAbsolute(console)) return "config: expected a <serial type='file'> with an absolute <source path='…'> (the job's console)";
    return undefined;
  }
  try {
    parseQemuConfig(spec.config);
  } catch (err) {
    return (err as Error).message.startsWith("config") ? (err as Error).message : `config: ${(err as Error).message}`;
  }
  if (configVmName(spec.config) !== name) return `config: -name must be the VM name "${name}", found "${configVmName(spec.config)}"`;
  return undefined;
}

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

/**
 * The node agent's core: holds desired state per VM, starts and stops QEMU to
 * match it, watches the processes, and persists everything atomically so that
 * a restarted agent re-adopts running VMs instead of starting duplicates.
 */
export class Agent {
  private vms = new Map<string, Entry>();
  private queues = new Map<string, Promise<unknown>>();
  private watcher?: NodeJS.Timeout;
  private readonly stateFile: string;
  private libvirtOps?: Promise<DriverOps>;

  constructor(
    readonly stateDir: string,
    private readonly log: (msg: string) => void = () => undefined,
  ) {
    this.stateFile = path.join(stateDir, "state.json");
  }

  /** Loads persisted state and re-adopts VMs whose QEMU is still running. */
  load(): void {
    fs.mkdirSync(path.join(this.stateDir, "vms"), { recursive: true });
    const saved = readJson<PersistedState>(this.stateFile);
    for (const v of saved?.vms ?? []) {
      const e: Entry = { ...v };
      const alive = e.observed.pid !== undefined && isQemuFor(e.observed.pid, e.name);
      if (alive) {
        e.observed = { ...e.observed, state: "running", message: "re-adopted after an agent restart" };
        this.log(`re-adopted VM ${e.name} (pid ${e.observed.pid})`);
      } else if (e.observed.state === "running" || e.observed.state === "starting") {
        e.observed = {
          ...e.observed,
          state: "failed",
          pid: undefined,
          lastExit: { at: new Date().toISOString(), code: null, signal: null, expected: false },
          message: "QEMU ended while the agent was down",
        };
      }
      this.vms.set(e.name, e);
    }
    this.persist();
    // Adopted processes are not our children: poll them.
    this.watcher = setInterval(() => this.pollAdopted(), 500);
    this.watcher.unref();
  }

  close(): void {
    if (this.watcher) clearInterval(this.watcher);
  }

  private persist(): void {
    const data: PersistedState = { vms: [...this.vms.values()].map(({ name, spec, observed }) => ({ name, spec, observed })) };
    writeFileAtomic(this.stateFile, JSON.stringify(data, null, 2));
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

  private vmDir(name: string): string {
    return path.join(this.stateDir, "vms", name);
  }

  private pollAdopted(): void {
    for (const e of this.vms.values()) {
      if (e.child || e.stopping || e.observed.state !== "running" || e.observed.pid === undefined) continue;
      if (!isQemuFor(e.observed.pid, e.name)) this.onExit(e, null, null);
    }
  }

  private onExit(e: Entry, code: number | null, signal: string | null): void {
    const expected = !!e.stopping;
    const job = this.job(e);
    // A process that was not our child (adopted, or libvirt's) ends with no status we can read:
    // then the job's result and its declared power-off tell a clean end from a crash.
    const unknownStatus = code === null && signal === null;
    const clean = job.state === "done" && (code === 0 || (unknownStatus && e.spec.afterJob === "power-off"));
    e.child = undefined;
    e.observed = {
      ...e.observed,
      state: expected ? "stopped" : clean ? "exited" : "failed",
      pid: undefined,
      lastExit: { at: new Date().toISOString(), code, signal, expected },
      message: expected
        ? "stopped by the agent"
        : clean
          ? "the guest powered off after its job"
          : `QEMU ended unexpectedly (${signal ? `signal ${signal}` : `exit code ${code ?? "unknown"}`})`,
    };
    if (!expected) this.log(`VM ${e.name}: ${e.observed.message}`);
    this.persist();
  }

  private isRunning(e: Entry): boolean {
    return e.observed.pid !== undefined && isQemuFor(e.observed.pid, e.name);
  }

  /** libvirt through its driver, opened once; opening probes and names what is missing. */
  private libvirt(): Promise<DriverOps> {
    if (!this.libvirtOps) {
      const { libvirtDriver } = require("../drivers/libvirt") as typeof import("../drivers/libvirt");
      this.libvirtOps = libvirtDriver.open({ stateDir: path.join(this.stateDir, "libvirt") });
      this.libvirtOps.catch(() => (this.libvirtOps = undefined));
    }
    return this.libvirtOps;
  }

  /** Defines and starts a libvirt domain; libvirtd supervises its QEMU, the agent polls that process. */
  private async startLibvirt(e: Entry): Promise<void> {
    const ops = await this.libvirt();
    const consoleFile = libvirtConsolePath(e.spec.config)!;
    fs.mkdirSync(path.dirname(consoleFile), { recursive: true });
    e.stopping = false;
    e.observed = { state: "starting", startedAt: new Date().toISOString(), starts: e.observed.starts + 1, lastExit: e.observed.lastExit };
    this.persist();
    await ops.destroy(e.name); // a stale definition of this name from an earlier run
    await ops.create({ name: e.name, config: e.spec.config });
    await ops.start(e.name);
    const pidFile = path.join(LIBVIRT_PID_DIR, `${e.name}.pid`);
    const pid = Number(fs.existsSync(pidFile) ? fs.readFileSync(pidFile, "utf8").trim() : NaN);
    if (!(pid > 0) || !isQemuFor(pid, e.name)) throw new Error(`VM ${e.name}: libvirt started the domain but its QEMU process was not found (${pidFile})`);
    e.observed = { ...e.observed, state: "running", pid, message: undefined };
    this.persist();
    this.log(`VM ${e.name} started by libvirt (pid ${pid})`);
  }

  private async start(e: Entry, incoming?: string): Promise<void> {
    if (e.spec.hypervisor === "libvirt") return this.startLibvirt(e);
    const paths = vmPaths(this.vmDir(e.name));
    // QEMU also locks its pidfile, so even a racing second start cannot run two copies.
    const child = startQemu(e.spec.config, paths, incoming ? ["-incoming", incoming] : []);
    e.child = child;
    e.stopping = false;
    e.observed = { state: "starting", pid: child.pid, startedAt: new Date().toISOString(), starts: e.observed.starts + 1, lastExit: e.observed.lastExit };
    child.on("exit", (code, signal) => {
      if (e.child === child) this.onExit(e, code, signal);
    });
    this.persist();
    // Wait until QEMU has written its pidfile (it is up) or has exited.
    const deadline = Date.now() + 10000;
    while (Date.now() < deadline && e.child === child) {
      if (fs.existsSync(paths.pidfile)) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    if (e.child !== child) {
      const err = fs.existsSync(paths.stderr) ? fs.readFileSync(paths.stderr, "utf8").trim().split("\n").slice(-3).join(" | ") : "";
      e.observed = { ...e.observed, message: `QEMU failed to start: ${err || e.observed.message}` };
      this.persist();
      throw new Error(`VM ${e.name}: ${e.observed.message}`);
    }
    e.observed = { ...e.observed, state: "running", message: incoming ? "waiting for a live migration" : undefined, incoming };
    this.persist();
    this.log(`VM ${e.name} started (pid ${child.pid})${incoming ? `, waiting for a migration on ${incoming}` : ""}`);
  }

  private async stop(e: Entry): Promise<void> {
    const pid = e.observed.pid;
    if (pid === undefined) return;
    e.stopping = true;
    if (e.spec.hypervisor === "libvirt") await (await this.libvirt()).stop(e.name, e.spec.stopGraceSeconds * 1000);
    else await stopQemu(pid, e.name, vmPaths(this.vmDir(e.name)), e.spec.stopGraceSeconds * 1000);
    if (e.child) {
      // Let the 'exit' handler record how it ended.
      const child = e.child;
      await new Promise<void>((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.once("exit", () => r())));
    } else if (e.observed.pid !== undefined) {
      this.onExit(e, null, null);
    }
  }

  /** Makes the VM match spec: starts it, restarts it when its config changed, or leaves it be. */
  put(name: string, spec: VmSpec): Promise<VmView> {
    const problem = checkConfig(name, spec);
    if (problem) return Promise.reject(new Error(problem));
    return this.serial(name, async () => {
      let e = this.vms.get(name);
      if (e && e.spec.hypervisor !== spec.hypervisor) {
        // Another hypervisor runs the VM now: take the old one down completely first.
        await this.remove(e);
        e = undefined;
      }
      if (!e) {
        e = { name, spec, observed: { state: "stopped", starts: 0 } };
        this.vms.set(name, e);
      }
      const running = this.isRunning(e);
      const changed = e.spec.config !== spec.config;
      if (running && changed) {
        this.log(`VM ${name}: config changed, restarting`);
        await this.stop(e);
      }
      e.spec = spec;
      if (!running || changed) await this.start(e);
      else {
        // A migration has landed here: the VM is now simply ours.
        e.observed = { ...e.observed, incoming: undefined, message: e.observed.incoming ? "migrated here" : e.observed.message };
        this.persist();
      }
      return this.view(e);
    });
  }

  /** Starts the VM as the target of a live migration, listening on a free loopback port. */
  incoming(name: string, spec: VmSpec): Promise<VmView> {
    const problem =
      checkConfig(name, spec) ?? (spec.hypervisor !== "qemu" ? `hypervisor: live migration needs "qemu", found ${JSON.stringify(spec.hypervisor)}` : undefined);
    if (problem) return Promise.reject(new Error(problem));
    return this.serial(name, async () => {
      const old = this.vms.get(name);
      if (old && this.isRunning(old)) throw new Error(`conflict: VM ${name} already runs on this agent`);
      const e: Entry = { name, spec, observed: { state: "stopped", starts: old?.observed.starts ?? 0 } };
      this.vms.set(name, e);
      await this.start(e, `tcp:127.0.0.1:${await freePort()}`);
      // QEMU listens for the migration once its monitor answers; the pidfile comes earlier.
      if (!(await waitForQmp(vmPaths(this.vmDir(name)).qmp, () => this.isRunning(e)))) throw new Error(`VM ${name}: the migration target did not come up`);
      return this.view(e);
    });
  }

  /** Live-migrates the running VM to a target started by incoming(); once it has landed, the VM is forgotten here. */
  migrate(name: string, target: string): Promise<{ totalMs: number; downtimeMs: number }> {
    return this.serial(name, async () => {
      const e = this.vms.get(name);
      if (!e) throw new Error(`not found: no VM named ${name}`);
      if (e.spec.hypervisor !== "qemu" || !this.isRunning(e)) throw new Error(`conflict: VM ${name} is not a running QEMU VM`);
      const paths = vmPaths(this.vmDir(name));
      await qmpCommand(paths.qmp, "migrate", { uri: target });
      const deadline = Date.now() + 120000;
      for (;;) {
        const info = (await qmpCommand(paths.qmp, "query-migrate")) as { status?: string; "total-time"?: number; downtime?: number; "error-desc"?: string };
        if (info.status === "completed") {
          this.log(`VM ${name} migrated to ${target} in ${info["total-time"]} ms (downtime ${info.downtime} ms)`);
          // The source is paused after the hand-over and must never run again.
          await this.remove(e);
          return { totalMs: info["total-time"] ?? 0, downtimeMs: info.downtime ?? 0 };
        }
        if (info.status === "failed" || info.status === "cancelled" || Date.now() > deadline) {
          await qmpCommand(paths.qmp, "migrate_cancel").catch(() => undefined);
          throw new Error(
            `migration of ${name} to ${target} ${info.status === "failed" || info.status === "cancelled" ? info.status : "timed out"}: ${info["error-desc"] ?? ""}`,
          );
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    });
  }

  /** Stops the VM and removes every trace of it: state, console, libvirt definition. */
  private async remove(e: Entry): Promise<void> {
    if (this.isRunning(e)) await this.stop(e);
    if (e.spec.hypervisor === "libvirt") {
      // Never started (e.g. libvirtd was missing): there is no domain to undefine.
      if (e.observed.starts > 0) await (await this.libvirt()).destroy(e.name);
      const consoleFile = libvirtConsolePath(e.spec.config)!;
      fs.rmSync(consoleFile, { force: true });
      try {
        fs.rmdirSync(path.dirname(consoleFile)); // the cluster's console directory, once empty
      } catch {
        // other VMs' consoles are still there
      }
    }
    this.vms.delete(e.name);
    fs.rmSync(this.vmDir(e.name), { recursive: true, force: true });
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

  async shutdown(): Promise<void> {
    await Promise.all([...this.vms.keys()].map((n) => this.delete(n)));
    this.close();
  }

  get(name: string): VmView | undefined {
    const e = this.vms.get(name);
    return e && this.view(e);
  }

  list(): VmView[] {
    return [...this.vms.values()].map((e) => this.view(e));
  }

  private consoleText(e: Entry): string {
    const file = e.spec.hypervisor === "libvirt" ? libvirtConsolePath(e.spec.config)! : vmPaths(this.vmDir(e.name)).console;
    try {
      const fd = fs.openSync(file, "r");
      try {
        const size = fs.fstatSync(fd).size;
        const len = Math.min(size, CONSOLE_READ_LIMIT);
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

  private job(e: Entry): JobResult {
    return parseJob(this.consoleText(e), e.spec.markers);
  }

  private view(e: Entry): VmView {
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
