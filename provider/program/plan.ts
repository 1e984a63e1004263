import * as os from "os";
import * as path from "path";
import { buildImage, hostKernel, imageId, imageRef, markersFor } from "../image/busybox";
import { probeKvm } from "../drivers/qemu";
import { loadDefinitions } from "../model/load";
import { ClusterModel, EnvironmentModel, ProfileModel, resolveClusters, VmModel } from "../model/resolve";
import { renderVmConfig } from "../render/render";

export const DEFAULT_CACHE_DIR = path.join(os.homedir(), ".cache", "vse-provider");
export const DEFAULT_STATE_DIR = path.join(os.homedir(), ".local", "state", "vse-provider");

/** Everything the program declares for one VM, computed before any resource exists. */
export interface VmPlan {
  vm: VmModel;
  accel: "tcg" | "kvm";
  config: string;
  imageId: string;
  markers: { begin: string; end: string };
}

export interface ClusterPlan {
  model: ClusterModel;
  imageId: string;
  vms: VmPlan[];
}

/** Resolves accel 'auto' by a real probe boot under KVM (cached per host setup). */
export async function resolveAccel(accel: ProfileModel["accel"], cacheDir: string): Promise<"tcg" | "kvm"> {
  if (accel !== "auto") return accel;
  const probeEnv: EnvironmentModel = {
    name: "kvm-probe",
    base: "busybox",
    kernelArgs: [],
    job: { command: ["true"], env: {}, afterJob: "power-off", timeoutSeconds: 30 },
  };
  const img = buildImage(probeEnv, cacheDir);
  const result = await probeKvm({ kernel: img.kernel, initrd: img.initrd, marker: `${markersFor(img.id).end} status=0==`, cacheDir });
  return result.kvm ? "kvm" : "tcg";
}

/** Loads definitions and computes every VM's rendered config: the part of the plan a reviewer reads. */
export async function planClusters(definitionPaths: string[], cacheDir = DEFAULT_CACHE_DIR): Promise<ClusterPlan[]> {
  const clusters = resolveClusters(loadDefinitions(definitionPaths));
  const kernel = hostKernel();
  const accels = new Map<string, "tcg" | "kvm">();
  const plans: ClusterPlan[] = [];
  for (const model of clusters) {
    const id = imageId(model.environment, kernel);
    const image = imageRef(cacheDir, id);
    const vms: VmPlan[] = [];
    for (const vm of model.vms) {
      if (!accels.has(vm.profile.accel)) accels.set(vm.profile.accel, await resolveAccel(vm.profile.accel, cacheDir));
      const accel = accels.get(vm.profile.accel)!;
      const config = renderVmConfig({ cluster: model.name, vm, image, accel, kernelArgs: model.environment.kernelArgs });
      vms.push({ vm, accel, config, imageId: id, markers: markersFor(id) });
    }
    plans.push({ model, imageId: id, vms });
  }
  return plans;
}
