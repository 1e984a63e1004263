import type { Hypervisor } from "../render/render";
import { CAPABILITY_NAMES, Driver } from "./driver";
import { libvirtDriver } from "./libvirt";
import { palaciosDriver } from "./palacios";
import { qemuDriver } from "./qemu-driver";
import { virtualboxDriver } from "./virtualbox";
import { xenDriver } from "./xen";

export const DRIVERS: Record<Hypervisor, Driver> = {
  qemu: qemuDriver,
  libvirt: libvirtDriver,
  xen: xenDriver,
  virtualbox: virtualboxDriver,
  palacios: palaciosDriver,
};

export const HYPERVISORS = Object.keys(DRIVERS) as Hypervisor[];

export function driverFor(hypervisor: Hypervisor): Driver {
  const d = DRIVERS[hypervisor];
  if (!d) throw new Error(`unknown hypervisor "${hypervisor}"; known: ${HYPERVISORS.join(", ")}`);
  return d;
}

const LABELS: Record<(typeof CAPABILITY_NAMES)[number], string> = {
  run: "Runs VMs here",
  pause: "Pause",
  resume: "Resume",
  gracefulStop: "Graceful stop",
  migrate: "Live migration",
  liveFacts: "Live facts (refresh)",
  liveMemory: "Live memory change",
  directKernelBoot: "Direct kernel boot",
};

/** The capability matrix in Markdown, generated from the drivers (docs/capabilities.md). */
export function capabilityMatrix(): string {
  const lines = [
    "# Hypervisor drivers: capability matrix",
    "",
    "<!-- Generated from provider/drivers/*.ts by provider/drivers/registry.ts (capabilityMatrix). Do not edit: run",
    "     UPDATE_DOCS=1 npx jest tests/drivers/capabilities.test.ts -->",
    "",
    "Switching hypervisor is a change of one field of a VM profile (`spec.hypervisor`); each driver renders the same",
    "profile from its own template and declares what it can do.",
    "",
    `| Capability | ${HYPERVISORS.map((h) => `\`${h}\``).join(" | ")} |`,
    `| --- | ${HYPERVISORS.map(() => ":---:").join(" | ")} |`,
    `| Template | ${HYPERVISORS.map((h) => `\`templates/${DRIVERS[h].template}\``).join(" | ")} |`,
    ...CAPABILITY_NAMES.map((c) => `| ${LABELS[c]} | ${HYPERVISORS.map((h) => (DRIVERS[h].capabilities[c] ? "yes" : "no")).join(" | ")} |`),
    "",
    "A capability of a driver that cannot run here is what the hypervisor offers, recorded for when it is wired.",
    "",
  ];
  for (const h of HYPERVISORS) {
    const d = DRIVERS[h];
    lines.push(`## ${d.title}`, "", "What a host needs (the probe checks these in order, before anything starts):", "");
    for (const r of d.requirements) lines.push(`- ${r.what} (if missing: ${r.missing})`);
    lines.push("", "Notes:", "", ...d.notes.map((n) => `- ${n}`), "");
  }
  return lines.join("\n");
}
