import * as fs from "fs";
import type { RenderInput } from "../render/render";
import { binaryOnPath, Driver, renderFor, renderOnlyOpen, Requirement } from "./driver";

const requirements: Requirement[] = [
  { what: "/dev/v3vee", check: () => fs.existsSync("/dev/v3vee"), missing: "/dev/v3vee is missing; build and load Palacios' v3vee kernel module" },
  binaryOnPath("v3_create", "Palacios' user-space tools (linux_usr/, built from the Palacios source)"),
];

/** Palacios (V3VEE): its XML guest configuration; the VMM is a kernel module built from source, so nothing runs here. */
export const palaciosDriver: Driver = {
  name: "palacios",
  title: "Palacios (V3VEE XML guest configuration)",
  template: "palacios/vm.xml.hbs",
  capabilities: { run: false, pause: true, resume: true, gracefulStop: false, migrate: true, liveFacts: false, liveMemory: false, directKernelBoot: false },
  notes: [
    "Rendered and checked only: Palacios is an out-of-tree kernel module with no Debian package.",
    "Boots through its BIOS from the image's boot.iso (not built yet).",
    "The profile's accel selects paging: tcg -> shadow, kvm -> nested; q35 and microvm get the i440FX/PIIX3 platform.",
    "Pause, resume and migrate are v3_pause/v3_continue/v3_move, not wired here.",
  ],
  requirements,
  render: (input: RenderInput) => renderFor("palacios", input),
  open: () => renderOnlyOpen("palacios", requirements),
};
