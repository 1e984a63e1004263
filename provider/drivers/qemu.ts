import * as crypto from "crypto";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import type { ChildProcess } from "child_process";
import { qmpCommand } from "./qmp";

export const QEMU_BINARY = "qemu-system-x86_64";

/** Where one VM's runtime files live, inside its agent's state directory. */
export interface VmPaths {
  dir: string;
  console: string;
  qmp: string;
  pidfile: string;
  stderr: string;
}

export function vmPaths(dir: string): VmPaths {
  return {
    dir,
    console: path.join(dir, "console.log"),
    qmp: path.join(dir, "qmp.sock"),
    pidfile: path.join(dir, "qemu.pid"),
    stderr: path.join(dir, "qemu.stderr.log"),
  };
}

/** Options the agent sets itself; a rendered config may not override them. */
const AGENT_OWNED = new Set(["-pidfile", "-qmp", "-serial", "-chardev", "-monitor", "-daemonize", "-incoming", "-runas", "-chroot", "-D", "-sandbox"]);

/** Parses the line-oriented config ("-option value" per line, '#' comments) into an argument vector. */
export function parseQemuConfig(text: string): string[] {
  const args: string[] = [];
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith("#")) return;
    const m = /^(-[a-z][a-z0-9-]*)(?:\s+(.*))?$/.exec(line);
    if (!m) throw new Error(`config line ${i + 1}: expected "-option [value]", found ${JSON.stringify(line.slice(0, 80))}`);
    if (AGENT_OWNED.has(m[1])) throw new Error(`config line ${i + 1}: ${m[1]} is set by the node agent and cannot be configured`);
    args.push(m[1]);
    if (m[2] !== undefined) args.push(m[2]);
  });
  const name = args[args.indexOf("-name") + 1];
  if (!args.includes("-name") || !name) throw new Error("config has no -name line");
  return args;
}

/** The name QEMU was started with, as it appears in its argument vector. */
export function configVmName(text: string): string {
  const args = parseQemuConfig(text);
  return args[args.indexOf("-name") + 1];
}

/** The full argument vector: the rendered config plus the agent's runtime plumbing. */
export function qemuArgs(config: string, paths: VmPaths): string[] {
  for (const p of [paths.console, paths.qmp, paths.pidfile]) {
    // QEMU option values use ',' as a separator.
    if (p.includes(",")) throw new Error(`state path ${p} contains ',', which QEMU options cannot carry`);
  }
  return [
    ...parseQemuConfig(config),
    "-pidfile",
    paths.pidfile,
    "-qmp",
    `unix:${paths.qmp},server=on,wait=off`,
    "-chardev",
    `file,id=vse-console,path=${paths.console}`,
    "-serial",
    "chardev:vse-console",
  ];
}

/** Starts QEMU detached from the agent, so an agent restart does not take its VMs down. */
export function startQemu(config: string, paths: VmPaths, extraArgs: string[] = []): ChildProcess {
  const execa = require("execa") as typeof import("execa");
  fs.mkdirSync(paths.dir, { recursive: true });
  for (const f of [paths.qmp, paths.pidfile]) fs.rmSync(f, { force: true });
  const errFd = fs.openSync(paths.stderr, "w");
  try {
    const child = execa(QEMU_BINARY, [...qemuArgs(config, paths), ...extraArgs], {
      detached: true,
      stdin: "ignore",
      stdout: errFd,
      stderr: errFd,
      cleanup: false,
      reject: false,
      buffer: false,
    });
    child.catch(() => undefined); // exit is observed through the 'exit' event
    return child;
  } finally {
    fs.closeSync(errFd);
  }
}

/** True when pid is a live QEMU started for vmName (guards against pid reuse). */
export function isQemuFor(pid: number, vmName: string): boolean {
  try {
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    if (/\) Z /.test(stat)) return false; // a zombie is already dead
    const i = argv.indexOf("-name");
    // libvirt starts QEMU with "-name guest=<vm>,debug-threads=on".
    const named = argv[i + 1] === vmName || (argv[i + 1] ?? "").split(",").includes(`guest=${vmName}`);
    return path.basename(argv[0]).startsWith("qemu-system") && i >= 0 && named;
  } catch {
    return false;
  }
}

/** The argument vector of a running process, for checking what a VM really runs with. */
export function processArgv(pid: number): string[] {
  return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitGone(pid: number, vmName: string, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (!isQemuFor(pid, vmName)) return true;
    await sleep(50);
  }
  return !isQemuFor(pid, vmName);
}

/**
 * Stops a VM: ACPI power-down and a grace period, then QMP quit, then SIGKILL.
 * Resolves once the process is gone.
 */
export async function stopQemu(pid: number, vmName: string, paths: VmPaths, graceMs: number): Promise<void> {
  if (!isQemuFor(pid, vmName)) return;
  if (graceMs > 0) {
    try {
      await qmpCommand(paths.qmp, "system_powerdown");
      if (await waitGone(pid, vmName, graceMs)) return;
    } catch {
      // fall through to quit
    }
  }
  try {
    await qmpCommand(paths.qmp, "quit", undefined, 2000);
    if (await waitGone(pid, vmName, 3000)) return;
  } catch {
    // fall through to SIGKILL
  }
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // already gone
  }
  await waitGone(pid, vmName, 5000);
}

/**
 * Waits until QEMU's monitor answers, which is when it is fully set up (e.g.
 * listening for an incoming migration); the pidfile comes slightly earlier.
 * Returns false if the process ended or the deadline passed first.
 */
export async function waitForQmp(qmp: string, alive: () => boolean, timeoutMs = 10000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (alive() && Date.now() < deadline) {
    try {
      await qmpCommand(qmp, "query-status", undefined, 1000);
      return true;
    } catch {
      await sleep(50);
    }
  }
  return false;
}

/** Live facts from QMP, for drift detection: run state and guest memory. */
export async function qemuFacts(paths: VmPaths): Promise<{ status: string; memoryMiB: number; vcpus: number }> {
  const status = (await qmpCommand(paths.qmp, "query-status")) as { status: string };
  const mem = (await qmpCommand(paths.qmp, "query-memory-size-summary")) as { "base-memory": number };
  const cpus = (await qmpCommand(paths.qmp, "query-cpus-fast")) as unknown[];
  return { status: status.status, memoryMiB: Math.round(mem["base-memory"] / (1024 * 1024)), vcpus: cpus.length };
}

/**
 * Whether KVM really works here. /dev/kvm existing proves nothing (nested KVM
 * may abort or hang), so boot the given kernel+initramfs under KVM and wait for
 * a marker, with a short timeout. The result is cached per host setup.
 */
export async function probeKvm(opts: {
  kernel: string;
  initrd: string;
  marker: string;
  cacheDir: string;
  timeoutMs?: number;
}): Promise<{ kvm: boolean; reason: string }> {
  if (!fs.existsSync("/dev/kvm")) return { kvm: false, reason: "/dev/kvm does not exist" };

  const execa = require("execa") as typeof import("execa");
  const qemuVersion = (await execa(QEMU_BINARY, ["--version"])).stdout.split("\n")[0];
  const key = crypto
    .createHash("sha256")
    .update(JSON.stringify([qemuVersion, os.release(), opts.kernel, fs.statSync("/dev/kvm").rdev]))
    .digest("hex")
    .slice(0, 16);
  const cacheFile = path.join(opts.cacheDir, "kvm-probe", `${key}.json`);
  if (fs.existsSync(cacheFile)) return JSON.parse(fs.readFileSync(cacheFile, "utf8"));
  const timeoutMs = opts.timeoutMs ?? 15000;
  const res = await execa(
    QEMU_BINARY,
    [
      "-machine",
      "pc",
      "-accel",
      "kvm",
      "-cpu",
      "host",
      "-m",
      "128M",
      "-nodefaults",
      "-no-user-config",
      "-display",
      "none",
      "-no-reboot",
      "-kernel",
      opts.kernel,
      "-initrd",
      opts.initrd,
      "-append",
      "console=ttyS0 panic=-1 quiet",
      "-serial",
      "stdio",
    ],
    { timeout: timeoutMs, reject: false, all: true, stdin: "ignore" },
  );
  const out = res.all ?? "";
  const result = out.includes(opts.marker)
    ? { kvm: true, reason: "a probe boot under KVM reached its marker" }
    : {
        kvm: false,
        reason: res.timedOut
          ? `a probe boot under KVM printed nothing within ${timeoutMs} ms`
          : `a probe boot under KVM failed: ${out.split("\n").filter(Boolean).slice(-1)[0] ?? `exit ${res.exitCode}`}`,
      };
  fs.mkdirSync(path.dirname(cacheFile), { recursive: true });
  fs.writeFileSync(cacheFile, JSON.stringify(result));
  return result;
}
