import * as fs from "fs";
import * as path from "path";
import type { RenderInput } from "../render/render";
import { binaryOnPath, Driver, DriverOps, OpenOptions, renderFor, requireAvailable, Requirement, VmInstance, VmState, VmStatus } from "./driver";

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

/** libvirt through virsh: define, start, shutdown (then destroy), suspend, resume, domstate, undefine. */
class LibvirtOps implements DriverOps {
  constructor(
    private readonly stateDir: string,
    private readonly uri: string,
  ) {}

  private async exists(name: string): Promise<boolean> {
    return (await listDomains(this.uri)).includes(name);
  }

  async create(vm: VmInstance): Promise<void> {
    // virsh define takes the name from the XML; every later call uses vm.name.
    const named = /<name>([^<]*)<\/name>/.exec(vm.config)?.[1];
    if (named !== vm.name) throw new Error(`libvirt: domain XML of VM ${vm.name} names ${JSON.stringify(named ?? null)} in <name>`);
    const file = path.join(this.stateDir, `${vm.name}.xml`);
    fs.mkdirSync(this.stateDir, { recursive: true });
    fs.writeFileSync(file, vm.config);
    await virsh(["define", file], this.uri);
  }

  async start(name: string): Promise<void> {
    if ((await this.status(name)).state === "running") return;
    await virsh(["start", name], this.uri);
  }

  async stop(name: string, graceMs: number): Promise<void> {
    if (!(await this.exists(name))) return;
    const st = await this.status(name);
    if (st.state === "stopped") return;
    if (graceMs > 0 && st.state === "running") {
      await virsh(["shutdown", name], this.uri).catch(() => undefined);
      const deadline = Date.now() + graceMs;
      while (Date.now() < deadline) {
        if ((await this.status(name)).state === "stopped") return;
        await sleep(200);
      }
    }
    await virsh(["destroy", name], this.uri).catch(async (err) => {
      // Ended on its own between the check and the destroy: that is what we wanted.
      if ((await this.status(name)).state !== "stopped") throw err;
    });
  }

  async pause(name: string): Promise<void> {
    await virsh(["suspend", name], this.uri);
  }

  async resume(name: string): Promise<void> {
    await virsh(["resume", name], this.uri);
  }

  async status(name: string): Promise<VmStatus> {
    if (!(await this.exists(name))) return { state: "absent", detail: "not defined" };
    const detail = (await virsh(["domstate", name], this.uri)).trim();
    const info = await virsh(["dominfo", name], this.uri);
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
    if (!(await this.exists(name))) return;
    await this.stop(name, 0);
    await virsh(["undefine", name], this.uri);
    fs.rmSync(path.join(this.stateDir, `${name}.xml`), { force: true });
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
    "Cluster network: interface type 'mcast' (QEMU's socket backend), no host bridge.",
  ],
  requirements,
  render: (input: RenderInput) => renderFor("libvirt", input),
  async open(opts: OpenOptions): Promise<DriverOps> {
    await requireAvailable("libvirt", requirements);
    return new LibvirtOps(opts.stateDir, LIBVIRT_URI);
  },
};
