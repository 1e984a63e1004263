// The VirtualMachine inputs of the tests' standard VM (128 MiB, 1 vCPU, pc,
// TCG, stay-up: as vmSpec in tests/support/agent.ts renders it) for a spec
// on one agent of a cluster, as the program would declare them.
import type { VmSpec } from "../../provider/agent/protocol";
import type { VirtualMachineInputs } from "../../provider/resources/virtual-machine";

/** Where the VM runs and how it is reached: the inputs that differ from test to test. */
export type VmPlacement = Pick<VirtualMachineInputs, "cluster" | "vmName" | "host" | "agentUrl" | "token" | "agentCa" | "allocationRef" | "jobTimeoutSeconds">;

export function testVmInputs(spec: VmSpec, at: VmPlacement): VirtualMachineInputs {
  return {
    ...at,
    hypervisor: "qemu",
    imageId: /image:([0-9a-f]{64})\//.exec(spec.config)![1],
    memoryMiB: 128,
    vcpus: 1,
    machine: "pc",
    accel: "tcg",
    kernelArgs: "",
    config: spec.config,
    markers: spec.markers,
    afterJob: "stay-up",
  };
}
