import * as fs from "fs";
import * as path from "path";
import Handlebars from "handlebars";
import type { ProfileModel, VmModel } from "../model/resolve";

/** The image files a VM boots: kernel and initramfs, by content address. */
export interface ImageRef {
  id: string;
  kernel: string;
  initrd: string;
}

export interface RenderInput {
  cluster: string;
  vm: VmModel;
  image: ImageRef;
  /** The accelerator after 'auto' was resolved on the target host. */
  accel: "tcg" | "kvm";
  kernelArgs: string[];
}

export const TEMPLATE_ROOT = [path.resolve(__dirname, "..", "..", "..", "templates"), path.resolve(__dirname, "..", "..", "templates")].find((p) =>
  fs.existsSync(p),
)!;

const TEMPLATE_FILES: Record<ProfileModel["hypervisor"], string> = { qemu: "qemu/vm.args.hbs" };

// A private Handlebars environment: strict (a missing field is an error, not
// an empty string) and without HTML escaping, since nothing here is HTML.
const hb = Handlebars.create();
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

/** Renders a VM's hypervisor config. Pure: the same input gives byte-identical output. */
export function renderVmConfig(input: RenderInput): string {
  const { vm } = input;
  const file = TEMPLATE_FILES[vm.profile.hypervisor];
  if (!file) throw new Error(`no template for hypervisor "${vm.profile.hypervisor}"`);
  const machineType = vm.profile.machine === "microvm" ? "microvm,pit=on,pic=on,rtc=on" : vm.profile.machine;
  return template(file)({
    cluster: input.cluster,
    vm,
    profile: vm.profile,
    image: input.image,
    accel: input.accel,
    machineType,
    append: kernelCommandLine(input.kernelArgs),
  });
}
