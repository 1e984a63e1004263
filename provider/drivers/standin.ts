// A STAND-IN for QEMU, for the control-plane benchmark only (`npm run bench -- --only control-plane`).
// It is not a hypervisor: it boots nothing. In place of each guest it supervises one real process
// (`sleep`, started by /bin/sh, which first prints the job's markers and a fixed output to the VM's
// console.log), so that agents, the provider and the engine can be measured on 1,000 VMs without
// booting 1,000 kernels.
//
// It is not in the driver registry (no profile can name it) and a node agent opens it only when it was
// started with --standin-guests (provider/agent/main.ts), which only the benchmark asks for: such an
// agent still checks every config through the QEMU allowlist, its image store and the site policy,
// then runs the VM as a stand-in process instead of QEMU.
import { spawn } from "child_process";
import * as fs from "fs";
import * as path from "path";
import type { DriverOps, ExitStatus, OpenOptions, RunningVm, StartOptions, VmInstance, VmStatus } from "./driver";
import { parseQemuConfig } from "./qemu";
import { markersFor } from "../image/busybox";

/** What the stand-in calls itself wherever it shows (console, errors, results). */
export const STANDIN_NAME = "standin";
/** The job output every stand-in guest reports. */
export const STANDIN_OUTPUT = "stand-in guest: no VM was booted\n";

const CONFIG_FILE = "standin.args";
const PIDFILE = "standin.pid";
/** argv[0] of the shell before it execs sleep; recover() accepts it for a process caught before its exec. */
const ARGV0 = "vse-standin";
const SLEEP_SECONDS = "2147483647";
const VM_DIR_NAME = /^[a-z]([a-z0-9-]*[a-z0-9])?$/;

// Prints a line saying what it is, the job's markers around a fixed output, then becomes `sleep`.
const SCRIPT = `printf '%s\\n%s\\n%s%s status=0==\\n' "vse stand-in for VM $1: a process, not a guest" "$2" "$3" "$4"; exec sleep ${SLEEP_SECONDS}`;

function sleepMs(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function argvOf(pid: number): string[] {
  return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean);
}

/** Whether the process is the stand-in's sleep: what its shell becomes, and stays until it is stopped. */
function isSleeping(pid: number, argv = argvOf(pid)): boolean {
  return path.basename(argv[0] ?? "") === "sleep" && argv[1] === SLEEP_SECONDS;
}

function isSleepingNow(pid: number): boolean {
  try {
    return isSleeping(pid);
  } catch {
    return false;
  }
}

class StandinOps implements DriverOps {
  constructor(
    private readonly stateDir: string,
    private readonly resolveImage?: OpenOptions["resolveImage"],
  ) {}

  private dir(name: string): string {
    if (!VM_DIR_NAME.test(name)) throw new Error(`VM name ${JSON.stringify(name)} is not a valid name`);
    return path.join(this.stateDir, name);
  }

  /**
   * The VM's live stand-in process: the pid its pidfile names, accepted only when that process runs in
   * the VM's own directory (its cwd) and is the stand-in's shell or its sleep; never a pid alone.
   */
  private pid(name: string): number | undefined {
    const dir = this.dir(name);
    let pid: number;
    try {
      pid = Number(fs.readFileSync(path.join(dir, PIDFILE), "utf8").trim());
    } catch {
      return undefined;
    }
    if (!(pid > 0)) return undefined;
    try {
      if (fs.readlinkSync(`/proc/${pid}/cwd`) !== fs.realpathSync(dir)) return undefined;
      const argv = argvOf(pid);
      const isShell = argv[0] === ARGV0;
      // While the shell execs sleep, /proc shows no command line for a moment (its cwd is still the VM's).
      const inExec = argv.length === 0;
      return isShell || isSleeping(pid, argv) || inExec ? pid : undefined;
    } catch {
      return undefined; // gone, or a zombie whose cwd can no longer be read
    }
  }

  async create(vm: VmInstance): Promise<void> {
    // The same allowlist as QEMU's: the stand-in runs only what the QEMU driver would run.
    const { facts } = parseQemuConfig(vm.config);
    if (facts.name !== vm.name) throw new Error(`${STANDIN_NAME}: config of VM ${vm.name} names "${facts.name}" in -name`);
    if (this.resolveImage) {
      this.resolveImage(facts.imageId, "vmlinuz");
      this.resolveImage(facts.imageId, "initrd.img");
    }
    const dir = this.dir(vm.name);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, CONFIG_FILE), vm.config);
  }

  async start(name: string, _opts: StartOptions = {}): Promise<RunningVm> {
    const live = this.pid(name);
    if (live !== undefined) return { pid: live };
    const dir = this.dir(name);
    const file = path.join(dir, CONFIG_FILE);
    if (!fs.existsSync(file)) throw new Error(`${STANDIN_NAME}: VM ${name} was not created on this host`);
    const { facts } = parseQemuConfig(fs.readFileSync(file, "utf8"));
    const markers = markersFor(facts.imageId);
    const consoleFd = fs.openSync(path.join(dir, "console.log"), "a");
    let child;
    try {
      child = spawn("/bin/sh", ["-c", SCRIPT, ARGV0, name, markers.begin, STANDIN_OUTPUT, markers.end], {
        argv0: ARGV0,
        cwd: dir,
        detached: true,
        stdio: ["ignore", consoleFd, consoleFd],
      });
    } finally {
      fs.closeSync(consoleFd);
    }
    const pid = child.pid;
    if (pid === undefined) throw new Error(`${STANDIN_NAME}: VM ${name}: could not spawn /bin/sh`);
    const exited = new Promise<ExitStatus>((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    child.once("error", () => undefined);
    fs.writeFileSync(path.join(dir, PIDFILE), `${pid}\n`);
    child.unref();
    // Started once the shell has printed the job and become sleep (QEMU's start likewise returns once QEMU
    // answers): a status taken while it still execs must not find a VM in between.
    const deadline = Date.now() + 5000;
    while (!isSleepingNow(pid)) {
      if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline)
        throw new Error(`${STANDIN_NAME}: VM ${name}: its stand-in process did not start (pid ${pid})`);
      await sleepMs(2);
    }
    return { pid, exited };
  }

  async recover(name: string): Promise<RunningVm | undefined> {
    const pid = this.pid(name);
    return pid === undefined ? undefined : { pid };
  }

  async stop(name: string, graceMs: number): Promise<void> {
    const pid = this.pid(name);
    if (pid === undefined) return;
    const signal = (sig: NodeJS.Signals) => {
      try {
        process.kill(pid, sig);
      } catch {
        // already gone
      }
    };
    signal(graceMs > 0 ? "SIGTERM" : "SIGKILL");
    const deadline = Date.now() + graceMs;
    while (this.pid(name) === pid && Date.now() < deadline) await sleepMs(10);
    if (this.pid(name) === pid) signal("SIGKILL");
    while (this.pid(name) === pid) await sleepMs(10);
  }

  async pause(name: string): Promise<void> {
    throw new Error(`${STANDIN_NAME}: VM ${name}: a stand-in cannot pause`);
  }

  async resume(name: string): Promise<void> {
    throw new Error(`${STANDIN_NAME}: VM ${name}: a stand-in cannot resume`);
  }

  async status(name: string): Promise<VmStatus> {
    const dir = this.dir(name);
    if (!fs.existsSync(path.join(dir, CONFIG_FILE))) return { state: "absent", detail: "not created" };
    return this.pid(name) === undefined ? { state: "stopped", detail: "no stand-in process" } : { state: "running", detail: "running" };
  }

  async destroy(name: string): Promise<void> {
    await this.stop(name, 0);
    if (this.pid(name) !== undefined) throw new Error(`${STANDIN_NAME}: VM ${name} is still running after a forced stop`);
    fs.rmSync(this.dir(name), { recursive: true, force: true });
  }
}

/** Not a Driver of the registry (it renders nothing and no profile may name it): only open(), for an agent started with --standin-guests. */
export const standinDriver = {
  name: STANDIN_NAME,
  title: "Stand-in processes in place of QEMU guests (benchmark only; boots nothing)",
  async open(opts: OpenOptions): Promise<DriverOps> {
    fs.mkdirSync(opts.stateDir, { recursive: true });
    return new StandinOps(opts.stateDir, opts.resolveImage);
  },
};
