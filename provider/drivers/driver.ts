import * as fs from "fs";
import * as path from "path";
import { Hypervisor, RenderInput, renderVmConfig } from "../render/render";

/**
 * The V2M contract (seed 002, libv3m): one interface over every hypervisor, so
 * that switching hypervisor is a change of one field of a VM profile.
 */
export interface Capabilities {
  /** This project can run VMs with it (not only render their configs). */
  run: boolean;
  pause: boolean;
  resume: boolean;
  /** Asks the guest to power off, then forces it after a timeout. */
  gracefulStop: boolean;
  /** Moves a running VM to another host (live). */
  migrate: boolean;
  /** Memory and vCPU facts of a running VM, for refresh and drift detection. */
  liveFacts: boolean;
  /** Changes guest memory without a restart. */
  liveMemory: boolean;
  /** Boots the image's kernel and initramfs without a boot disk. */
  directKernelBoot: boolean;
}

export const CAPABILITY_NAMES: (keyof Capabilities)[] = ["run", "pause", "resume", "gracefulStop", "migrate", "liveFacts", "liveMemory", "directKernelBoot"];

/** One thing a probe looks for, and how to get it when it is missing. */
export interface Requirement {
  what: string;
  /** True when present. */
  check: () => boolean | Promise<boolean>;
  /** Said when it is missing: "not found on PATH; install libvirt-clients". */
  missing: string;
}

export interface ProbeResult {
  hypervisor: Hypervisor;
  available: boolean;
  /** Everything looked for, in order, present or not. */
  checked: string[];
  /** What is missing, each with how to get it. */
  missing: string[];
}

export class HypervisorUnavailableError extends Error {
  constructor(readonly probe: ProbeResult) {
    super(`${probe.hypervisor}: not available on this host; checked ${probe.checked.join(", ")}; missing: ${probe.missing.join("; ")}`);
    this.name = "HypervisorUnavailableError";
  }
}

export type VmState = "running" | "paused" | "stopped" | "absent" | "crashed" | "other";

export interface VmStatus {
  state: VmState;
  /** The hypervisor's own word for the state. */
  detail: string;
  memoryMiB?: number;
  vcpus?: number;
}

/** A VM as a driver sees it: its name and its rendered config. */
export interface VmInstance {
  name: string;
  config: string;
  /** A warm image's job, handed to the guest after the restore (VmSpec.job); other VMs have theirs in their image. */
  job?: { command: string[]; env: Record<string, string> };
}

export interface StartOptions {
  /** Start as the target of a migration, waiting for the VM's state on this URI (QEMU: -incoming). */
  incoming?: string;
  /** Start from this saved state file (a checkpoint the agent has verified) instead of booting; the guest then runs on from where it was saved. */
  restoreFile?: string;
}

/** How a hypervisor process ended: exit code or signal; both null when the process was not ours to wait for. */
export interface ExitStatus {
  code: number | null;
  signal: string | null;
}

/** The process that runs a VM, as the agent supervises it. */
export interface RunningVm {
  pid: number;
  /** Resolves when the process ends, with its status where the driver can read it (its own child). Absent for a re-attached process. */
  exited?: Promise<ExitStatus>;
  /** How the VM came up: restored from a pre-booted snapshot ("warm") or booted ("cold"). */
  launch?: "warm" | "cold";
}

/** Operations on VMs of one host. Methods that do not apply to a hypervisor are absent, as its capabilities say. */
export interface DriverOps {
  /** Records the VM (libvirt: define) without starting it; refuses a config outside the driver's allowlist (ConfigRefused). */
  create(vm: VmInstance): Promise<void>;
  /** Starts the VM; resolves once its process is up (QEMU: its monitor answers). A VM already running is left as it is. */
  start(name: string, opts?: StartOptions): Promise<RunningVm>;
  /**
   * Re-attaches to the VM's live process after the agent restarted (Nomad's RecoverTask): the process
   * its pidfile names, checked by pidfile path and VM name together, never by pid alone. Undefined when it is not running.
   */
  recover(name: string): Promise<RunningVm | undefined>;
  /** Graceful power-off, then force once graceMs have passed; resolves when the VM is down. */
  stop(name: string, graceMs: number): Promise<void>;
  pause(name: string): Promise<void>;
  resume(name: string): Promise<void>;
  status(name: string): Promise<VmStatus>;
  /** Forces the VM off if it runs and removes every trace of it (libvirt: undefine). */
  destroy(name: string): Promise<void>;
  /** Live migration to a VM started with StartOptions.incoming; resolves once the source has handed over and ended. On failure the source keeps running. */
  migrate?(name: string, targetUri: string): Promise<{ totalMs: number; downtimeMs: number }>;
  /** Saves the running VM's whole state into file (QEMU: migrate to a file); the VM is left stopped, resume() lets it go on. */
  saveState?(name: string, file: string): Promise<void>;
}

export interface OpenOptions {
  /** Where the driver keeps per-VM runtime files: one directory per VM, <stateDir>/<name>, whose console.log is the serial console (the job's output is read from its tail). */
  stateDir: string;
  /** Resolves a content-addressed image reference (image:<id>/<file>) to a file of the host's image store; throws when it is not there. */
  resolveImage?: (id: string, file: "vmlinuz" | "initrd.img") => string;
  /** Prefixes hypervisor-global names (libvirt domains) so that two stacks never touch each other's VMs: vse-<cluster key>-. */
  domainPrefix?: string;
  /** Where warm-launch snapshots live (the host's store); without it warm VMs boot cold and none is saved. */
  snapshotDir?: string;
  /** The host's address (agents serving beyond this machine): NICs bound to agent:host-address are bound to it. Default 127.0.0.1. */
  hostAddress?: string;
  /**
   * QEMU: a directory of tls-creds-x509 files from the cluster's CA (ca-cert.pem, server-/client-cert.pem and -key.pem). With it, a
   * migration over tcp:<address>:<port> is TLS both ways (the target verifies the source's certificate too); without it tcp: is refused.
   */
  migrationTlsDir?: string;
}

export interface Driver {
  name: Hypervisor;
  title: string;
  /** The template under templates/ that render() fills. */
  template: string;
  capabilities: Capabilities;
  /** Limits a reader of the capability matrix must know. */
  notes: string[];
  /** What a host needs to run this hypervisor. */
  requirements: Requirement[];
  render(input: RenderInput): string;
  /** Opens the driver on this host: probes first, and throws HypervisorUnavailableError before anything is started. */
  open(opts: OpenOptions): Promise<DriverOps>;
}

/** True when an executable named bin is on PATH. */
export function onPath(bin: string): boolean {
  return (process.env.PATH ?? "").split(path.delimiter).some((dir) => {
    if (!dir) return false;
    try {
      fs.accessSync(path.join(dir, bin), fs.constants.X_OK);
      return fs.statSync(path.join(dir, bin)).isFile();
    } catch {
      return false;
    }
  });
}

export function binaryOnPath(bin: string, pkg: string): Requirement {
  return { what: `${bin} on PATH`, check: () => onPath(bin), missing: `${bin} not found on PATH; install ${pkg}` };
}

export async function probe(hypervisor: Hypervisor, requirements: Requirement[]): Promise<ProbeResult> {
  const checked: string[] = [];
  const missing: string[] = [];
  for (const r of requirements) {
    checked.push(r.what);
    let ok = false;
    try {
      ok = await r.check();
    } catch {
      ok = false;
    }
    if (!ok) missing.push(r.missing);
  }
  return { hypervisor, available: missing.length === 0, checked, missing };
}

/** Probes and throws when anything is missing; the error names what was checked and what is missing. */
export async function requireAvailable(hypervisor: Hypervisor, requirements: Requirement[]): Promise<ProbeResult> {
  const result = await probe(hypervisor, requirements);
  if (!result.available) throw new HypervisorUnavailableError(result);
  return result;
}

/** The render of a driver: refuses input meant for another hypervisor, so a driver never renders someone else's config. */
export function renderFor(hypervisor: Hypervisor, input: RenderInput): string {
  if (input.vm.profile.hypervisor !== hypervisor) {
    throw new Error(`the ${hypervisor} driver cannot render VM ${input.vm.name}: its profile asks for ${input.vm.profile.hypervisor}`);
  }
  return renderVmConfig(input);
}

/** A driver this project renders configs for but cannot run: open() reports what the host lacks, or that running is not implemented. */
export async function renderOnlyOpen(hypervisor: Hypervisor, requirements: Requirement[]): Promise<never> {
  await requireAvailable(hypervisor, requirements);
  throw new Error(`${hypervisor}: the host has what the probe looks for, but this driver only renders configs; running VMs is not implemented`);
}
