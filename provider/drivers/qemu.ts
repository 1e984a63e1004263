import * as crypto from "crypto";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import type { ChildProcess } from "child_process";
import { DEFAULT_IMAGE_CACHE, imageResolver } from "../image/busybox";
import { qmpCommand } from "./qmp";
import { clusterNetwork, HOST_ADDRESS_PLACEHOLDER, LOOPBACK_HOST_ADDRESS, macAddress } from "./network";

/** The image store of a caller that names none: the default cache directory's. */
export function defaultImageResolver(): ImageResolver {
  return imageResolver(DEFAULT_IMAGE_CACHE);
}

export const QEMU_BINARY = "qemu-system-x86_64";

/** Where one VM's runtime files live, inside its agent's state directory. */
export interface VmPaths {
  dir: string;
  console: string;
  qmp: string;
  pidfile: string;
  stderr: string;
  /** The warm guest's control port (its ttyS1): the agent writes the guest's identity here. */
  control: string;
}

export function vmPaths(dir: string): VmPaths {
  return {
    dir,
    console: path.join(dir, "console.log"),
    qmp: path.join(dir, "qmp.sock"),
    pidfile: path.join(dir, "qemu.pid"),
    stderr: path.join(dir, "qemu.stderr.log"),
    control: path.join(dir, "control.sock"),
  };
}

/** A config that asks for warm launch: its guest waits for its identity on a second serial port (provider/image/busybox.ts warmInit). */
export function isWarm(facts: ConfigFacts): boolean {
  return facts.kernelArgs.split(" ").includes("vse.warm=1");
}

/**
 * What a rendered config asks for, as the node agent checks it against site
 * policy. The parsers below (and parseLibvirtDomain in libvirt.ts) produce it
 * from a config they accepted in full.
 */
export interface ConfigFacts {
  /** QEMU: -name (the VM name); libvirt: <name> (the domain name, vse-<cluster key>-<vm name>). */
  name: string;
  machine: "pc" | "q35" | "microvm";
  accel: "tcg" | "kvm";
  memoryMiB: number;
  vcpus: number;
  /** The image both kernel and initrd come from (its content id). */
  imageId: string;
  /** The kernel command line: -append / <cmdline>, "" when there is none. */
  kernelArgs: string;
  nics: { mac: string; mcast: { address: string; port: number } }[];
}

/** What only the agent knows about a config: its cluster and its host's address. With it, the parsers refuse another cluster's network or another host's address. */
export interface NetworkContext {
  clusterKey: string;
  /** The address this agent's VMs send and receive cluster traffic from: its host's (127.0.0.1 for agents of this machine). */
  hostAddress: string;
}

/** A config the node agent does not run: names the line, the field and, in the message, what was found and what is allowed. */
export class ConfigRefused extends Error {
  constructor(
    readonly line: number,
    readonly field: string,
    message: string,
  ) {
    super(message.startsWith(`config line ${line}: `) ? message : `config line ${line}: ${message}`);
    this.name = "ConfigRefused";
  }
}

/** Resolves a reference into the agent's image store to the file's real path. */
export type ImageResolver = (id: string, file: "vmlinuz" | "initrd.img") => string;

/** The largest config the agent reads, in characters. */
export const MAX_CONFIG_CHARS = 64 * 1024;
/** The largest kernel command line, in bytes (printable ASCII, so also characters). */
export const MAX_KERNEL_ARGS = 4096;
/** The most NICs a VM may have. */
export const MAX_NICS = 16;

// Shared value grammars, also used by parseLibvirtDomain.
export const IMAGE_ID_PATTERN = "[0-9a-f]{64}";
export const KERNEL_REF = new RegExp(`^image:(${IMAGE_ID_PATTERN})/vmlinuz$`);
export const INITRD_REF = new RegExp(`^image:(${IMAGE_ID_PATTERN})/initrd\\.img$`);
/** A VM name: a lower-case DNS label of at most 80 characters. */
export const VM_NAME = /^[a-z](?:[a-z0-9-]{0,78}[a-z0-9])?$/;
export const MAC = /^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$/;
const OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
/** An organisation-local multicast group, 239.255.<0-255>.<1-255>. */
export const MCAST_GROUP = new RegExp(`^239\\.255\\.${OCTET}\\.${OCTET}$`);
export const MIN_MEMORY_MIB = 16;
export const MAX_MEMORY_MIB = 1048576;
export const MAX_VCPUS = 1024;

const CONTROL_NAMES: Record<number, string> = {
  0: "NUL",
  8: "backspace",
  9: "tab",
  11: "vertical tab",
  12: "form feed",
  13: "carriage return",
  27: "escape",
  127: "delete",
};

/** A short, escaped rendering of what was found, for messages. */
export function found(value: string, max = 80): string {
  return JSON.stringify(value.length > max ? `${value.slice(0, max)}…` : value);
}

/**
 * Refuses control characters anywhere (C0 except the newline between lines,
 * DEL, C1) and unpaired surrogates, naming the line; refuses an oversized config.
 */
export function refuseControlCharacters(text: string): void {
  if (text.length > MAX_CONFIG_CHARS) {
    const line = text.slice(0, MAX_CONFIG_CHARS).split("\n").length;
    throw new ConfigRefused(line, "config", `the config is longer than ${MAX_CONFIG_CHARS} characters; the node agent reads no more`);
  }
  const bad = /[\x00-\x09\x0b-\x1f\x7f-\x9f]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.exec(text);
  if (!bad) return;
  const line = text.slice(0, bad.index).split("\n").length;
  const code = bad[0].charCodeAt(0);
  const what =
    code >= 0xd800 && code <= 0xdfff
      ? `an unpaired surrogate U+${code.toString(16).toUpperCase()}`
      : `control character U+${code.toString(16).toUpperCase().padStart(4, "0")}${CONTROL_NAMES[code] ? ` (${CONTROL_NAMES[code]})` : ""}`;
  throw new ConfigRefused(line, "config", `${what} in the config; only printable characters are allowed, and newlines between lines`);
}

/** A decimal integer without sign or leading zeros within min..max, or undefined. */
export function boundedInt(text: string, min: number, max: number): number | undefined {
  if (!/^(0|[1-9][0-9]{0,9})$/.test(text)) return undefined;
  const n = Number(text);
  return n >= min && n <= max ? n : undefined;
}

/** True when text is a kernel command line the agent passes: printable ASCII, at most MAX_KERNEL_ARGS bytes. */
export function isKernelArgs(text: string): boolean {
  return text.length <= MAX_KERNEL_ARGS && /^[\x20-\x7e]*$/.test(text);
}

/** A multicast group and port the agent lets a NIC join: 239.255.<0-255>.<1-255>, port 1024..65535. */
export function mcastEndpoint(address: string, port: string): { address: string; port: number } | undefined {
  const m = MCAST_GROUP.exec(address);
  const p = boundedInt(port, 1024, 65535);
  if (!m || m[2] === "0" || p === undefined) return undefined;
  return { address, port: p };
}

/** A host address a NIC may be bound to: a unicast IPv4 address, never the wildcard 0.0.0.0, multicast or broadcast. */
export function isHostAddress(text: string): boolean {
  const m = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`).exec(text);
  return !!m && Number(m[1]) !== 0 && Number(m[1]) < 224;
}

/**
 * Refuses a NIC outside the agent's cluster network: another cluster's group
 * or port, a MAC without the cluster's prefix, or a bound address other than
 * the agent's own host address (the placeholder, which the agent fills in
 * itself, is its own). line and field say where, for the refusal.
 */
export function checkNic(nic: ConfigFacts["nics"][number] & { localaddr?: string }, ctx: NetworkContext, line: number, field: string): void {
  const net = clusterNetwork(ctx.clusterKey);
  if (nic.mcast.address !== net.mcast.address || nic.mcast.port !== net.mcast.port)
    throw new ConfigRefused(
      line,
      field,
      `NIC ${nic.mac} joins ${nic.mcast.address}:${nic.mcast.port}; this cluster's network is ${net.mcast.address}:${net.mcast.port}`,
    );
  const prefix = macAddress(ctx.clusterKey, 0).slice(0, 8);
  if (!nic.mac.startsWith(prefix)) throw new ConfigRefused(line, field, `MAC ${nic.mac} is not of this cluster (expected ${prefix}:…)`);
  if (nic.localaddr === undefined) {
    // libvirt's mcast interface has no local address: QEMU then joins wherever the group routes, which is only safe on this machine's loopback segment.
    if (ctx.hostAddress !== LOOPBACK_HOST_ADDRESS)
      throw new ConfigRefused(
        line,
        field,
        `NIC ${nic.mac} is not bound to a host address (libvirt cannot say one for a multicast interface); on host ${ctx.hostAddress} the cluster network needs hypervisor qemu`,
      );
    return;
  }
  if (nic.localaddr !== HOST_ADDRESS_PLACEHOLDER && nic.localaddr !== ctx.hostAddress)
    throw new ConfigRefused(
      line,
      field,
      `NIC ${nic.mac} is bound to ${nic.localaddr}; a VM on this host sends only from its host's address ${ctx.hostAddress} (or ${HOST_ADDRESS_PLACEHOLDER})`,
    );
}

/** True for a locally administered unicast MAC in canonical lower-case form. */
export function isLocalUnicast(mac: string): boolean {
  if (!MAC.test(mac)) return false;
  const first = parseInt(mac.slice(0, 2), 16);
  return (first & 0x03) === 0x02;
}

/** The QEMU options a rendered config may carry (templates/qemu/vm.args.hbs), in the order the template writes them. */
export const QEMU_OPTIONS = [
  "-name",
  "-machine",
  "-accel",
  "-m",
  "-smp",
  "-kernel",
  "-initrd",
  "-append",
  "-netdev",
  "-device",
  "-nodefaults",
  "-no-user-config",
  "-display",
  "-no-reboot",
];
const FLAGS = new Set(["-nodefaults", "-no-user-config", "-no-reboot"]);
/** Options a config must have: what the facts need, and no defaults, no other config file read, no display. */
const REQUIRED = ["-name", "-machine", "-accel", "-m", "-smp", "-kernel", "-initrd", "-nodefaults", "-no-user-config", "-display"];
const REQUIRED_WHY: Record<string, string> = {
  "-nodefaults": "no default devices",
  "-no-user-config": "no other config file is read",
  "-display": "-display none: no display",
};
const MACHINES: Record<string, ConfigFacts["machine"]> = { pc: "pc", q35: "q35", "microvm,pit=on,pic=on,rtc=on": "microvm" };
const NETDEV = /^socket,id=vse(0|[1-9][0-9]?),mcast=([0-9.]+):([0-9]+),localaddr=([^,]+)$/;
const DEVICE = /^virtio-net-pci,netdev=vse(0|[1-9][0-9]?),mac=([^,]*)$/;
/** Options the agent adds itself: named in refusals, so a user sees why they cannot be configured. */
const AGENT_OWNED = new Set(["-pidfile", "-qmp", "-serial", "-chardev", "-monitor", "-daemonize", "-incoming", "-runas", "-chroot", "-sandbox"]);

/**
 * Parses a rendered QEMU config (templates/qemu/vm.args.hbs: one "-option value"
 * per line, '#' comments, blank lines) against a strict allowlist: exactly the
 * options the template renders, each with a value grammar, each at most once
 * except the per-NIC -netdev/-device pairs. Anything else is a ConfigRefused
 * naming the line. Returns the argument vector (image references not yet
 * resolved) and the facts site policy is checked against.
 */
export function parseQemuConfig(text: string, ctx?: NetworkContext): { args: string[]; facts: ConfigFacts } {
  refuseControlCharacters(text);
  const lines = text.split("\n");
  const args: string[] = [];
  const seen = new Map<string, number>();
  const facts: Partial<ConfigFacts> & { nics: ConfigFacts["nics"] } = { nics: [] };
  const macs = new Set<string>();
  let kernelId: string | undefined;
  let initrdId: string | undefined;
  let initrdLine = 0;
  /** Per NIC index: the line of its -netdev and, once seen, of its -device. */
  const netdevs: { line: number; mcast: { address: string; port: number }; localaddr: string; device?: number; mac?: string }[] = [];
  const allowed = `it allows: ${QEMU_OPTIONS.join(", ")}`;

  lines.forEach((raw, i) => {
    const n = i + 1;
    const line = raw.replace(/^ +| +$/g, "");
    if (!line || line.startsWith("#")) return;
    const sp = line.indexOf(" ");
    const opt = sp < 0 ? line : line.slice(0, sp);
    const value = sp < 0 ? undefined : line.slice(sp + 1).replace(/^ +/, "");
    if (!/^-[A-Za-z][A-Za-z0-9-]*$/.test(opt))
      throw new ConfigRefused(n, "config", `expected "-option value" (one QEMU option per line), found ${found(line)}`);
    if (!QEMU_OPTIONS.includes(opt)) {
      const why = AGENT_OWNED.has(opt) ? "; the node agent sets it itself" : "";
      throw new ConfigRefused(n, opt, `${opt} is not an option the node agent runs${why} (${allowed})`);
    }
    const refuse = (expected: string): never => {
      throw new ConfigRefused(n, opt, `${opt} expects ${expected}, found ${value === undefined ? "no value" : found(value)}`);
    };
    if (opt !== "-netdev" && opt !== "-device") {
      const first = seen.get(opt);
      if (first !== undefined) throw new ConfigRefused(n, opt, `${opt} is given twice (first on line ${first}); each option may appear once`);
      seen.set(opt, n);
    }
    if (FLAGS.has(opt)) {
      if (value !== undefined) throw new ConfigRefused(n, opt, `${opt} takes no value, found ${found(value)}`);
      args.push(opt);
      return;
    }
    if (value === undefined || value === "") refuse(describe(opt));
    const v = value as string;
    switch (opt) {
      case "-name":
        if (!VM_NAME.test(v)) refuse(describe(opt));
        facts.name = v;
        break;
      case "-machine":
        if (!(v in MACHINES)) refuse(describe(opt));
        facts.machine = MACHINES[v];
        break;
      case "-accel":
        if (v !== "tcg" && v !== "kvm") refuse(describe(opt));
        facts.accel = v as ConfigFacts["accel"];
        break;
      case "-m": {
        const m = /^([0-9]+)M$/.exec(v);
        const mib = m ? boundedInt(m[1], MIN_MEMORY_MIB, MAX_MEMORY_MIB) : undefined;
        if (mib === undefined) refuse(describe(opt));
        facts.memoryMiB = mib;
        break;
      }
      case "-smp": {
        const c = boundedInt(v, 1, MAX_VCPUS);
        if (c === undefined) refuse(describe(opt));
        facts.vcpus = c;
        break;
      }
      case "-kernel": {
        const m = KERNEL_REF.exec(v);
        if (!m) refuse(describe(opt));
        kernelId = m![1];
        break;
      }
      case "-initrd": {
        const m = INITRD_REF.exec(v);
        if (!m) refuse(describe(opt));
        initrdId = m![1];
        initrdLine = n;
        break;
      }
      case "-append":
        if (!isKernelArgs(v)) refuse(describe(opt));
        facts.kernelArgs = v;
        break;
      case "-display":
        if (v !== "none") refuse(describe(opt));
        break;
      case "-netdev": {
        const m = NETDEV.exec(v);
        const mcast = m ? mcastEndpoint(m[2], m[3]) : undefined;
        if (!m || !mcast || !(m[4] === HOST_ADDRESS_PLACEHOLDER || isHostAddress(m[4]))) refuse(describe(opt));
        const index = Number(m![1]);
        if (index !== netdevs.length)
          throw new ConfigRefused(n, opt, `-netdev ids must be vse0, vse1, … in order; found vse${index} where vse${netdevs.length} was expected`);
        if (index >= MAX_NICS) throw new ConfigRefused(n, opt, `a VM may have at most ${MAX_NICS} NICs (vse0..vse${MAX_NICS - 1})`);
        netdevs.push({ line: n, mcast: mcast!, localaddr: m![4] });
        break;
      }
      case "-device": {
        const m = DEVICE.exec(v);
        if (!m || !isLocalUnicast(m[2])) refuse(describe(opt));
        const index = Number(m![1]);
        const nd = netdevs[index];
        if (!nd) throw new ConfigRefused(n, opt, `-device names netdev vse${index}, which no -netdev line before it defines`);
        if (nd.device !== undefined) throw new ConfigRefused(n, opt, `netdev vse${index} already has a -device (line ${nd.device}); each NIC has one`);
        if (macs.has(m![2])) throw new ConfigRefused(n, opt, `MAC ${m![2]} is given to two NICs`);
        macs.add(m![2]);
        nd.device = n;
        nd.mac = m![2];
        break;
      }
    }
    args.push(opt, v);
  });

  const end = lines.length;
  for (const opt of REQUIRED) {
    if (!seen.has(opt)) {
      const why = REQUIRED_WHY[opt] ? ` (${REQUIRED_WHY[opt]})` : "";
      throw new ConfigRefused(end, opt, `the config has no ${opt} line, which the node agent requires${why}`);
    }
  }
  if (kernelId !== initrdId) {
    throw new ConfigRefused(initrdLine, "-initrd", `-initrd names image ${initrdId} but -kernel names image ${kernelId}; both must come from the same image`);
  }
  for (const [i, nd] of netdevs.entries()) {
    if (nd.device === undefined)
      throw new ConfigRefused(nd.line, "-netdev", `netdev vse${i} has no -device virtio-net-pci,netdev=vse${i},mac=…; each -netdev needs its NIC`);
    const nic = { mac: nd.mac!, mcast: nd.mcast };
    // The bound address (an IPv4 address or the placeholder) is checked here; absent, as for libvirt's mcast, it means "not bound".
    if (ctx) checkNic({ ...nic, localaddr: nd.localaddr }, ctx, nd.line, "-netdev");
    facts.nics.push(nic);
  }
  return {
    args,
    facts: {
      name: facts.name!,
      machine: facts.machine!,
      accel: facts.accel!,
      memoryMiB: facts.memoryMiB!,
      vcpus: facts.vcpus!,
      imageId: kernelId!,
      kernelArgs: facts.kernelArgs ?? "",
      nics: facts.nics,
    },
  };
}

/** What each option's value must look like, as a refusal says it. */
function describe(opt: string): string {
  switch (opt) {
    case "-name":
      return "a lower-case DNS label (a-z, 0-9, '-', starting with a letter, at most 80 characters)";
    case "-machine":
      return `one of ${Object.keys(MACHINES).join(", ")}`;
    case "-accel":
      return "tcg or kvm";
    case "-m":
      return `<MiB>M with MiB from ${MIN_MEMORY_MIB} to ${MAX_MEMORY_MIB}`;
    case "-smp":
      return `a vCPU count from 1 to ${MAX_VCPUS}`;
    case "-kernel":
      return "image:<id>/vmlinuz from the agent's image store (<id>: 64 lower-case hex digits)";
    case "-initrd":
      return "image:<id>/initrd.img from the agent's image store (<id>: 64 lower-case hex digits)";
    case "-append":
      return `a kernel command line of printable ASCII, at most ${MAX_KERNEL_ARGS} bytes`;
    case "-display":
      return "none";
    case "-netdev":
      return `socket,id=vse<N>,mcast=239.255.<0-255>.<1-255>:<port 1024-65535>,localaddr=<the host's IPv4 address, or ${HOST_ADDRESS_PLACEHOLDER}>`;
    case "-device":
      return "virtio-net-pci,netdev=vse<N>,mac=<locally administered unicast MAC, lower case>";
    default:
      return "a value";
  }
}

/** The name QEMU is started with (-name), from a config the agent accepts. */
export function configVmName(text: string): string {
  return parseQemuConfig(text).facts.name;
}

/** A resolved image file's path: what the resolver returns must be an absolute path QEMU takes whole. */
function checkedPath(p: string, what: string): string {
  if (!path.isAbsolute(p) || /[\x00-\x1f\x7f]/.test(p)) throw new Error(`the image store resolved ${what} to ${found(p)}, which is not an absolute path`);
  return p;
}

/**
 * The full argument vector QEMU runs with: the accepted config with its image
 * references resolved through resolveImage, then the agent's runtime plumbing
 * (pidfile, QMP socket, serial console to a file). A NIC bound to
 * HOST_ADDRESS_PLACEHOLDER is bound to hostAddress, the agent's own.
 */
export function qemuArgs(config: string, paths: VmPaths, resolveImage: ImageResolver, hostAddress = LOOPBACK_HOST_ADDRESS): string[] {
  for (const p of [paths.console, paths.qmp, paths.pidfile, paths.control]) {
    // QEMU option values use ',' as a separator.
    if (p.includes(",")) throw new Error(`state path ${p} contains ',', which QEMU options cannot carry`);
  }
  const { args, facts } = parseQemuConfig(config);
  const resolved: string[] = [];
  // Walk option by option (a flag alone, any other option with its value), so a value that looks like an option is never taken for one.
  for (let i = 0; i < args.length;) {
    const opt = args[i];
    if (FLAGS.has(opt)) {
      resolved.push(opt);
      i += 1;
      continue;
    }
    const value = args[i + 1];
    if (opt === "-kernel") resolved.push(opt, checkedPath(resolveImage(facts.imageId, "vmlinuz"), "the kernel"));
    else if (opt === "-initrd") resolved.push(opt, checkedPath(resolveImage(facts.imageId, "initrd.img"), "the initrd"));
    else if (opt === "-netdev" && value.endsWith(`,localaddr=${HOST_ADDRESS_PLACEHOLDER}`)) {
      if (!isHostAddress(hostAddress)) throw new Error(`the agent's host address ${found(hostAddress)} is not a unicast IPv4 address`);
      resolved.push(opt, `${value.slice(0, -HOST_ADDRESS_PLACEHOLDER.length)}${hostAddress}`);
    } else resolved.push(opt, value);
    i += 2;
  }
  return [
    ...resolved,
    "-pidfile",
    paths.pidfile,
    "-qmp",
    `unix:${paths.qmp},server=on,wait=off`,
    "-chardev",
    `file,id=vse-console,path=${paths.console}`,
    "-serial",
    "chardev:vse-console",
    // The warm guest's control port is ttyS1, after the console; a unix socket inside the agent's private state.
    ...(isWarm(facts) ? ["-chardev", `socket,id=vse-control,path=${paths.control},server=on,wait=off`, "-serial", "chardev:vse-control"] : []),
  ];
}

/** Starts QEMU detached from the agent, so an agent restart does not take its VMs down. */
export function startQemu(
  config: string,
  paths: VmPaths,
  extraArgs: string[] = [],
  resolveImage: ImageResolver = defaultImageResolver(),
  hostAddress = LOOPBACK_HOST_ADDRESS,
): ChildProcess {
  const execa = require("execa") as typeof import("execa");
  fs.mkdirSync(paths.dir, { recursive: true });
  // Never the pidfile: QEMU locks it, so a second QEMU of this VM fails instead of running beside the first; a stale one it overwrites.
  fs.rmSync(paths.qmp, { force: true });
  const errFd = fs.openSync(paths.stderr, "w");
  try {
    const child = execa(QEMU_BINARY, [...qemuArgs(config, paths, resolveImage, hostAddress), ...extraArgs], {
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
