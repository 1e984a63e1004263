import * as fs from "fs";
import type { RenderInput } from "../render/render";
import { binaryOnPath, Driver, renderFor, renderOnlyOpen, Requirement } from "./driver";

const requirements: Requirement[] = [
  binaryOnPath("VBoxManage", "VirtualBox from Oracle's repository (Debian main does not package it)"),
  { what: "/dev/vboxdrv", check: () => fs.existsSync("/dev/vboxdrv"), missing: "/dev/vboxdrv is missing; load the vboxdrv kernel module" },
];

/** VirtualBox: a VBoxManage command plan, one JSON argument array per line; not runnable here. */
export const virtualboxDriver: Driver = {
  name: "virtualbox",
  title: "VirtualBox (VBoxManage command plan)",
  template: "virtualbox/vboxmanage.plan.hbs",
  capabilities: { run: false, pause: true, resume: true, gracefulStop: true, migrate: false, liveFacts: true, liveMemory: false, directKernelBoot: false },
  notes: [
    "Rendered and checked only: VirtualBox is not in Debian main and needs its kernel module.",
    "No direct kernel boot: the plan attaches the image's boot.iso, which the image builder does not make yet.",
    "Chipset from the profile's machine: q35 -> ich9, pc and microvm -> piix3; the profile's accel does not apply.",
    "Pause, resume and graceful stop are VBoxManage controlvm pause/resume/acpipowerbutton, not wired here; teleporting is not offered.",
  ],
  requirements,
  render: (input: RenderInput) => renderFor("virtualbox", input),
  open: () => renderOnlyOpen("virtualbox", requirements),
};
