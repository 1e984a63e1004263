import * as fs from "fs";
import * as path from "path";
import type { RenderInput } from "../render/render";
import { binaryOnPath, Driver, DriverOps, OpenOptions, renderFor, requireAvailable, Requirement, StartOptions, VmInstance, VmStatus } from "./driver";
import { configVmName, isQemuFor, QEMU_BINARY, qemuArgs, qemuFacts, startQemu, stopQemu, VmPaths, vmPaths, waitForQmp } from "./qemu";
import { qmpCommand } from "./qmp";

const requirements: Requirement[] = [binaryOnPath(QEMU_BINARY, "qemu-system-x86")];

const CONFIG_FILE = "vm.args";

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** QEMU through the functions the node agent uses (qemu.ts), plus QMP for pause, resume, facts and migration. */
class QemuOps implements DriverOps {
  constructor(private readonly stateDir: string) {}

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
    const p = this.paths(name);
    try {
      const pid = Number(fs.readFileSync(p.pidfile, "utf8").trim());
      return pid > 0 && isQemuFor(pid, name) ? pid : undefined;
    } catch {
      return undefined;
    }
  }

  async create(vm: VmInstance): Promise<void> {
    const p = this.paths(vm.name);
    qemuArgs(vm.config, p); // refuse a bad config now, not at start
    // The driver finds its process by -name; a config naming another VM would run unseen.
    if (configVmName(vm.config) !== vm.name) throw new Error(`qemu: config of VM ${vm.name} names "${configVmName(vm.config)}" in -name`);
    fs.mkdirSync(p.dir, { recursive: true });
    fs.writeFileSync(path.join(p.dir, CONFIG_FILE), vm.config);
  }

  async start(name: string, opts: StartOptions = {}): Promise<void> {
    if (this.pid(name) !== undefined) return;
    const p = this.paths(name);
    const config = this.config(name);
    const child = startQemu(config, p, opts.incoming ? ["-incoming", opts.incoming] : []);
    let exited = false;
    child.once("exit", () => (exited = true));
    const deadline = Date.now() + 10000;
    while (!fs.existsSync(p.pidfile) && !exited && Date.now() < deadline) await sleep(20);
    await waitForQmp(p.qmp, () => !exited, Math.max(0, deadline - Date.now()));
    child.unref();
    if (exited || this.pid(name) === undefined) {
      const err = fs.existsSync(p.stderr) ? fs.readFileSync(p.stderr, "utf8").trim().split("\n").slice(-3).join(" | ") : "";
      throw new Error(`qemu: VM ${name} failed to start${err ? `: ${err}` : ""}`);
    }
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
    fs.rmSync(this.paths(name).dir, { recursive: true, force: true });
  }

  /** Live migration to a QEMU started with StartOptions.incoming = targetUri; resolves when the source has handed over and quit. */
  async migrate(name: string, targetUri: string): Promise<void> {
    const p = this.paths(name);
    await qmpCommand(p.qmp, "migrate", { uri: targetUri });
    const deadline = Date.now() + 120000;
    for (;;) {
      const info = (await qmpCommand(p.qmp, "query-migrate")) as { status?: string; "error-desc"?: string };
      if (info.status === "completed") break;
      if (info.status === "failed" || info.status === "cancelled") throw new Error(`qemu: migration of ${name} ${info.status}: ${info["error-desc"] ?? ""}`);
      if (Date.now() > deadline) {
        await qmpCommand(p.qmp, "migrate_cancel").catch(() => undefined);
        throw new Error(`qemu: migration of ${name} did not complete within 120 s`);
      }
      await sleep(100);
    }
    // The source is paused after handing over; it must not be resumed, only ended.
    await this.stop(name, 0);
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
    "Cluster network: QEMU's socket backend in multicast mode on 127.0.0.1 (opt-in render input).",
  ],
  requirements,
  render: (input: RenderInput) => renderFor("qemu", input),
  async open(opts: OpenOptions): Promise<DriverOps> {
    await requireAvailable("qemu", requirements);
    fs.mkdirSync(opts.stateDir, { recursive: true });
    return new QemuOps(opts.stateDir);
  },
};
