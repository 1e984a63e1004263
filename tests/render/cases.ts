import type { ProfileModel } from "../../provider/model/resolve";
import type { Hypervisor, RenderInput } from "../../provider/render/render";
import { HYPERVISORS } from "../../provider/drivers/registry";
import { clusterKey, clusterNetwork } from "../../provider/drivers/network";
import { imageRef } from "../../provider/image/busybox";

export interface RenderCase {
  name: string;
  input: RenderInput;
}

const image = imageRef("0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0");
/** The cases' cluster key: project "vse", stack "local", cluster "md-sim" (as planClusters computes it by default). */
export const CASES_KEY = clusterKey("vse", "local", "md-sim");

function input(hypervisor: Hypervisor, p: Omit<ProfileModel, "hypervisor" | "name">, extra: Partial<RenderInput> & { index?: number }): RenderInput {
  const index = extra.index ?? 0;
  return {
    cluster: "md-sim",
    clusterKey: CASES_KEY,
    vm: { name: `md-sim-${index}`, index, host: index % 2, profile: { name: "compute", hypervisor, ...p } },
    image,
    accel: p.accel === "kvm" ? "kvm" : "tcg",
    kernelArgs: extra.kernelArgs ?? [],
    network: extra.network,
    consoleLog: extra.consoleLog,
  };
}

/**
 * Together the cases take every profile field through every value that
 * changes a render: machine pc/q35/microvm, accel tcg/kvm ('auto' is resolved
 * before rendering), memory, vcpus 1/2/4, with and without the cluster
 * network, and kernel arguments carrying XML-special characters.
 */
export function renderCases(hypervisor: Hypervisor): RenderCase[] {
  return [
    { name: "default", input: input(hypervisor, { memoryMiB: 256, vcpus: 1, machine: "pc", accel: "tcg" }, {}) },
    {
      name: "q35-kvm-network",
      input: input(
        hypervisor,
        { memoryMiB: 2048, vcpus: 4, machine: "q35", accel: "kvm" },
        { index: 3, network: clusterNetwork(CASES_KEY), kernelArgs: ["vse.tag=<a&b>", "quote='x'"], consoleLog: "/srv/vse/md-sim/md-sim-3/console.log" },
      ),
    },
    {
      name: "microvm-network",
      input: input(hypervisor, { memoryMiB: 128, vcpus: 2, machine: "microvm", accel: "tcg" }, { index: 1, network: clusterNetwork(CASES_KEY) }),
    },
  ];
}

export const ALL_HYPERVISORS: Hypervisor[] = [...HYPERVISORS];
