import * as fs from "fs";
import type { RenderInput } from "../render/render";
import { binaryOnPath, Driver, renderFor, renderOnlyOpen, Requirement } from "./driver";

const requirements: Requirement[] = [
  binaryOnPath("xl", "xen-utils (and boot the host under the Xen hypervisor)"),
  {
    what: "/proc/xen/capabilities naming control_d",
    check: () => fs.existsSync("/proc/xen/capabilities") && fs.readFileSync("/proc/xen/capabilities", "utf8").includes("control_d"),
    missing: "this host is not a Xen dom0 (/proc/xen/capabilities has no control_d); boot it under xen-hypervisor",
  },
];

/** Xen: xl.cfg rendered (PV for microvm, HVM for pc and q35); running needs a dom0, which this machine is not. */
export const xenDriver: Driver = {
  name: "xen",
  title: "Xen (xl toolstack; PV and HVM)",
  template: "xen/xl.cfg.hbs",
  capabilities: { run: false, pause: true, resume: true, gracefulStop: true, migrate: true, liveFacts: true, liveMemory: true, directKernelBoot: true },
  notes: [
    "Rendered and checked only: running needs a Xen dom0.",
    "Guest type from the profile's machine: microvm -> PV (console hvc0), pc and q35 -> HVM (xl has no q35 model).",
    "The profile's accel does not apply.",
    "Pause, resume, migrate and live memory are what xl offers (xl pause/unpause/migrate/mem-set), not wired here.",
  ],
  requirements,
  render: (input: RenderInput) => renderFor("xen", input),
  open: () => renderOnlyOpen("xen", requirements),
};
