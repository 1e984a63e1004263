import * as fs from "fs";
import * as path from "path";
import type { RenderInput } from "../render/render";
import { binaryOnPath, Driver, DriverOps, OpenOptions, renderFor, requireAvailable, Requirement, RunningVm, VmInstance, VmState, VmStatus } from "./driver";
import { defaultImageResolver, ImageResolver, isQemuFor } from "./qemu";
import { parseLibvirtDomain, resolveLibvirtDomain } from "./libvirt-domain";

export { AGENT_CONSOLE_PLACEHOLDER, parseLibvirtDomain, resolveLibvirtDomain } from "./libvirt-domain";

export const LIBVIRT_URI = "qemu:///system";
const LIBVIRT_SOCKET = "/var/run/libvirt/libvirt-sock";

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Runs virsh with an argument vector against the system connection; throws with virsh's own message. */
export async function virsh(args: string[], uri = LIBVIRT_URI): Promise<string> {
  const execa = require("execa") as typeof import("execa");
  const res = await execa("virsh", ["--connect", uri, "--quiet", ...args], { reject: false, stdin: "ignore", timeout: 60000 });
  if (res.exitCode !== 0) {
    const msg = (res.stderr || res.stdout)
      .trim()
      .replace(/^error: /gm, "")
      .split("\n")
      .join(" ");
    throw new Error(`virsh ${args.join(" ")}: ${msg || `exit ${res.exitCode}`}`);
  }
  return res.stdout;
}

/** Lists every domain, running or not, by name. */
export async function listDomains(uri = LIBVIRT_URI): Promise<string[]> {
  return (await virsh(["list", "--all", "--name"], uri))
    .split("\n")
    .map((s) => s.trim())
    .filter(Boolean);
}

const requirements: Requirement[] = [
  binaryOnPath("virsh", "libvirt-clients"),
  binaryOnPath("libvirtd", "libvirt-daemon-system"),
  binaryOnPath("qemu-system-x86_64", "qemu-system-x86"),
  {
    what: `libvirtd answering on ${LIBVIRT_SOCKET}`,
    check: async () => {
      if (!fs.existsSync(LIBVIRT_SOCKET)) return false;
      await virsh(["version"]);
      return true;
    },
    missing: `libvirtd is not answering on ${LIBVIRT_SOCKET}; start it (scripts/libvirtd-up.sh)`,
  },
];

/** libvirt's domain states (virsh domstate) mapped onto the driver's. */
function state(detail: string): VmState {
  switch (detail) {
    case "running":
    case "idle":
    case "in shutdown":
      return "running";
    case "paused":
    case "pmsuspended":
      return "paused";
    case "shut off":
      return "stopped";
    case "crashed":
      return "crashed";
    default:
      return "other";
  }
}

/** Where libvirtd writes the pid of a domain's QEMU. */
const LIBVIRT_PID_DIR = "/var/run/libvirt/qemu";

/**
 * libvirt through virsh: define, start, shutdown (then destroy), suspend,
 * resume, domstate, undefine. VMs are named as the agent names them; their
 * domains carry the cluster's prefix (libvirt's names are host-global), and the
 * XML defined is the allowlisted config with the agent's own image and console
 * paths filled in.
 */
class LibvirtOps implements DriverOps {
  constructor(
    private readonly stateDir: string,
    private readonly uri: string,
    private readonly prefix: string,
    private readonly resolveImage: ImageResolver,
  ) {}

  private domain(name: string): string {
    if (!/^[a-z]([a-z0-9-]*[a-z0-9])?$/.test(name)) throw new Error(`VM name ${JSON.stringify(name)} is not a valid name`);
    return `${this.prefix}${name}`;
  }

  private dir(name: string): string {
    return path.join(this.stateDir, name);
  }

  private async exists(name: string): Promise<boolean> {
    return (await listDomains(this.uri)).includes(this.domain(name));
  }

  async create(vm: VmInstance): Promise<void> {
    const { facts } = parseLibvirtDomain(vm.config);
    // virsh define takes the name from the XML; every later call uses the domain name.
    if (facts.name !== this.domain(vm.name))
      throw new Error(`libvirt: domain XML of VM ${vm.name} names "${facts.name}" in <name>, expected "${this.domain(vm.name)}"`);
    const dir = this.dir(vm.name);
    fs.mkdirSync(dir, { recursive: true });
    const xml = resolveLibvirtDomain(vm.config, { resolveImage: this.resolveImage, consolePath: path.join(dir, "console.log") });
    const file = path.join(dir, "domain.xml");
    fs.writeFileSync(file, xml);
    await virsh(["define", file], this.uri);
  }

  /** The pid of the domain's QEMU while it runs, checked against its name. */
  private pid(name: string): number | undefined {
    const domain = this.domain(name);
    try {
      const pid = Number(fs.readFileSync(path.join(LIBVIRT_PID_DIR, `${domain}.pid`), "utf8").trim());
      return pid > 0 && isQemuFor(pid, domain) ? pid : undefined;
    } catch {
      return undefined;
    }
  }

  async start(name: string): Promise<RunningVm> {
    if ((await this.status(name)).state !== "running") await virsh(["start", this.domain(name)], this.uri);
    const pid = this.pid(name);
    if (pid === undefined) throw new Error(`libvirt: domain ${this.domain(name)} started but its QEMU process was not found (${LIBVIRT_PID_DIR})`);
    return { pid };
  }

  async recover(name: string): Promise<RunningVm | undefined> {
    const pid = this.pid(name);
    return pid === undefined ? undefined : { pid };
  }

  async stop(name: string, graceMs: number): Promise<void> {
    if (!(await this.exists(name))) return;
    const domain = this.domain(name);
    const st = await this.status(name);
    if (st.state === "stopped") return;
    if (graceMs > 0 && st.state === "running") {
      await virsh(["shutdown", domain], this.uri).catch(() => undefined);
      const deadline = Date.now() + graceMs;
      while (Date.now() < deadline) {
        if ((await this.status(name)).state === "stopped") return;
        await sleep(200);
      }
    }
    await virsh(["destroy", domain], this.uri).catch(async (err) => {
      // Ended on its own between the check and the destroy: that is what we wanted.
      if ((await this.status(name)).state !== "stopped") throw err;
    });
  }

  async pause(name: string): Promise<void> {
    await virsh(["suspend", this.domain(name)], this.uri);
  }

  async resume(name: string): Promise<void> {
    await virsh(["resume", this.domain(name)], this.uri);
  }

  async status(name: string): Promise<VmStatus> {
    if (!(await this.exists(name))) return { state: "absent", detail: "not defined" };
    const detail = (await virsh(["domstate", this.domain(name)], this.uri)).trim();
    const info = await virsh(["dominfo", this.domain(name)], this.uri);
    const field = (key: string) => new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(info)?.[1];
    const usedKiB = field("Used memory");
    const cpus = field("CPU\\(s\\)");
    return {
      state: state(detail),
      detail,
      memoryMiB: usedKiB === undefined ? undefined : Math.round(Number(usedKiB) / 1024),
      vcpus: cpus === undefined ? undefined : Number(cpus),
    };
  }

  async destroy(name: string): Promise<void> {
    if (await this.exists(name)) {
      await this.stop(name, 0);
      await virsh(["undefine", this.domain(name)], this.uri);
    }
    fs.rmSync(this.dir(name), { recursive: true, force: true });
  }
}

export const libvirtDriver: Driver = {
  name: "libvirt",
  title: "libvirt (domain type qemu or kvm, through virsh)",
  template: "libvirt/domain.xml.hbs",
  capabilities: { run: true, pause: true, resume: true, gracefulStop: true, migrate: false, liveFacts: true, liveMemory: false, directKernelBoot: true },
  notes: [
    "Graceful stop is virsh shutdown (ACPI), then virsh destroy after the timeout.",
    "Migration: libvirt can migrate between two libvirtd hosts; not wired here, as this machine runs one libvirtd.",
    "Cluster network: interface type 'mcast' (QEMU's socket backend), no host bridge; on this machine only: libvirt's mcast interface cannot bind to a host address, so agents of other hosts refuse it (use qemu there).",
  ],
  requirements,
  render: (input: RenderInput) => renderFor("libvirt", input),
  async open(opts: OpenOptions): Promise<DriverOps> {
    await requireAvailable("libvirt", requirements);
    return new LibvirtOps(opts.stateDir, LIBVIRT_URI, opts.domainPrefix ?? "", opts.resolveImage ?? defaultImageResolver());
  },
};
