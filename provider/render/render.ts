import * as fs from "fs";
import * as path from "path";
import Handlebars from "handlebars";
import type { ProfileModel, VmModel } from "../model/resolve";
import { ClusterNetwork, domainName, LOOPBACK_HOST_ADDRESS, Nic, nicsFor } from "../drivers/network";

/**
 * The image a VM boots, as a rendered config names it: kernel and initramfs by
 * reference into the node agent's image store ("image:<id>/vmlinuz"), where id
 * is the image's content address (imageRef in provider/image/busybox.ts). The
 * agent resolves the references; a config never names a host path.
 */
export interface ImageRef {
  id: string;
  kernel: `image:${string}/vmlinuz`;
  initrd: `image:${string}/initrd.img`;
}

/** Where an image's files really are on a host (imageFiles): for the builder and whatever boots the image outside a rendered config. */
export interface ImageFiles {
  id: string;
  kernel: string;
  initrd: string;
}

/** What the libvirt template names as the serial console file; the node agent puts its own per-VM file there. */
export const AGENT_CONSOLE = "agent:console";

export interface RenderInput {
  cluster: string;
  /** The cluster's key (clusterKey in provider/drivers/network.ts): per Pulumi stack, it names the cluster's MACs, network and libvirt domains. */
  clusterKey: string;
  vm: VmModel;
  image: ImageRef;
  /** The accelerator after 'auto' was resolved on the target host. */
  accel: "tcg" | "kvm";
  kernelArgs: string[];
  /** The cluster's private network; without it the VM gets no NIC (the default, so existing configs stay as they are). */
  network?: ClusterNetwork;
  /**
   * The address the VM's NICs send and receive from: its host's address (static hosts), HOST_ADDRESS_PLACEHOLDER
   * where the plan cannot know it (resource-manager hosts; the agent fills in its own), 127.0.0.1 (the default) for agents of this machine.
   */
  hostAddress?: string;
  /** Where the serial console is written, for the render-only hypervisors whose config names the file (Xen HVM, VirtualBox, Palacios); libvirt's is always AGENT_CONSOLE. */
  consoleLog?: string;
}

export const TEMPLATE_ROOT = [path.resolve(__dirname, "..", "..", "..", "templates"), path.resolve(__dirname, "..", "..", "templates")].find((p) =>
  fs.existsSync(p),
)!;

export type Hypervisor = ProfileModel["hypervisor"];

export const TEMPLATE_FILES: Record<Hypervisor, string> = {
  qemu: "qemu/vm.args.hbs",
  libvirt: "libvirt/domain.xml.hbs",
  xen: "xen/xl.cfg.hbs",
  virtualbox: "virtualbox/vboxmanage.plan.hbs",
  palacios: "palacios/vm.xml.hbs",
};

// A private Handlebars environment: strict (a missing field is an error, not
// an empty string) and without HTML escaping, since nothing here is HTML.
const hb = Handlebars.create();

const XML_ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;" };

/** Escapes text for XML element content and attribute values in either quote style. */
export function xmlEscape(value: unknown): string {
  return String(value).replace(/[&<>"']/g, (c) => XML_ESCAPES[c]);
}

/** A double-quoted xl.cfg string; xl has no escape for '"' or newlines, so such values are refused rather than mangled. */
export function xlString(value: unknown): string {
  const s = String(value);
  if (/["\\\n\r]/.test(s)) throw new Error(`value ${JSON.stringify(s)} cannot be written as an xl.cfg string`);
  return `"${s}"`;
}

hb.registerHelper("xml", (v: unknown) => xmlEscape(v));
hb.registerHelper("xl", (v: unknown) => xlString(v));
// One JSON array per line in the VirtualBox plan: arguments stay arguments, whatever they contain.
hb.registerHelper("json", (...args: unknown[]) => JSON.stringify(args.slice(0, -1).map(String)));
hb.registerHelper("concat", (...args: unknown[]) => args.slice(0, -1).map(String).join(""));
hb.registerHelper("eq", (a: unknown, b: unknown) => a === b);
hb.registerHelper("inc", (n: unknown) => Number(n) + 1);
hb.registerHelper("range", (n: unknown) => Array.from({ length: Number(n) }, (_, i) => i));
hb.registerHelper("macHex", (mac: unknown) => String(mac).replace(/:/g, "").toUpperCase());
const compiled = new Map<string, HandlebarsTemplateDelegate>();

function template(file: string): HandlebarsTemplateDelegate {
  let t = compiled.get(file);
  if (!t) {
    t = hb.compile(fs.readFileSync(path.join(TEMPLATE_ROOT, file), "utf8"), { strict: true, noEscape: true });
    compiled.set(file, t);
  }
  return t;
}

/** Kernel parameters the provider needs: the serial console and a panic that ends the VM. */
export function kernelCommandLine(extra: string[]): string {
  return ["console=ttyS0", "panic=-1", "quiet", ...extra].join(" ");
}

/** Where the console log goes when the caller does not say: one file per VM, named after cluster and VM. */
export function defaultConsoleLog(cluster: string, vm: string): string {
  return `/var/log/vse-provider/${cluster}/${vm}.console.log`;
}

/**
 * Per-hypervisor facts derived from the profile, so that templates stay
 * declarative. Xen: 'microvm' (no emulated platform) maps to a PV guest,
 * 'pc' and 'q35' to HVM; a PV guest's console is hvc0, not ttyS0.
 */
function hypervisorFacts(input: RenderInput) {
  const p = input.vm.profile;
  const xenType = p.machine === "microvm" ? "pv" : "hvm";
  const xenArgs = xenType === "pv" ? ["console=hvc0", "panic=-1", "quiet", ...input.kernelArgs].join(" ") : kernelCommandLine(input.kernelArgs);
  return {
    libvirt: { domainType: input.accel === "kvm" ? "kvm" : "qemu" },
    xen: { type: xenType, pv: xenType === "pv", cmdline: xenArgs },
    // VirtualBox offers PIIX3 and ICH9 chipsets only; microvm has no equivalent, so it gets the simpler PIIX3.
    virtualbox: { chipset: p.machine === "q35" ? "ich9" : "piix3", ioapic: p.vcpus > 1 || p.machine === "q35" ? "on" : "off" },
    // Palacios has no software emulation: 'tcg' asks for shadow paging, 'kvm' for nested paging (hardware).
    palacios: { paging: input.accel === "kvm" ? "nested" : "shadow" },
  };
}

/** Renders a VM's hypervisor config. Pure: the same input gives byte-identical output. */
export function renderVmConfig(input: RenderInput): string {
  const { vm } = input;
  const file = TEMPLATE_FILES[vm.profile.hypervisor];
  if (!file) throw new Error(`no template for hypervisor "${vm.profile.hypervisor}"`);
  const machineType = vm.profile.machine === "microvm" ? "microvm,pit=on,pic=on,rtc=on" : vm.profile.machine;
  const nics: Nic[] = input.network ? nicsFor(input.clusterKey, vm.index) : [];
  return template(file)({
    cluster: input.cluster,
    vm,
    profile: vm.profile,
    image: { ...input.image, bootIso: path.posix.join(path.posix.dirname(input.image.kernel), "boot.iso") },
    accel: input.accel,
    machineType,
    append: kernelCommandLine(input.kernelArgs),
    network: input.network,
    nics,
    localaddr: input.hostAddress ?? LOOPBACK_HOST_ADDRESS,
    consoleLog: input.consoleLog ?? defaultConsoleLog(input.cluster, vm.name),
    agentConsole: AGENT_CONSOLE,
    domainName: domainName(input.clusterKey, vm.name),
    ...hypervisorFacts(input),
  });
}
