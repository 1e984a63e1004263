// Types only: the package's index loads the whole SDK (automation API, closure serializer, TypeScript).
import type * as pulumi from "@pulumi/pulumi";
import type { ProfileModel } from "../model/resolve";
import { ModuleProviderResource } from "./provider-module";

export interface VmProfileInputs {
  /** The profile with units normalised and defaults filled in. */
  spec: ProfileModel;
}

export interface VmProfileOutputs extends VmProfileInputs {
  /** What the probe looked for on this host (all present). */
  hypervisorChecked: string[];
}

/**
 * Fails early, before any VM is started, when this host lacks the profile's
 * hypervisor: the driver's probe names what it looked for and what is missing.
 */
async function check(inputs: VmProfileInputs): Promise<VmProfileOutputs> {
  const { driverFor } = require("../drivers/registry") as typeof import("../drivers/registry");
  const { probe, HypervisorUnavailableError } = require("../drivers/driver") as typeof import("../drivers/driver");
  const { AGENT_HYPERVISORS } = require("../agent/protocol") as typeof import("../agent/protocol");
  const h = inputs.spec.hypervisor;
  const driver = driverFor(h);
  const result = await probe(h, driver.requirements);
  if (!result.available) throw new Error(`VmProfile ${inputs.spec.name}: ${new HypervisorUnavailableError(result).message}`);
  if (!driver.capabilities.run || !AGENT_HYPERVISORS.includes(h)) {
    throw new Error(
      `VmProfile ${inputs.spec.name}: hypervisor "${h}" is render-only in this release (vse render shows its configs); node agents run ${AGENT_HYPERVISORS.join(" and ")} (docs/capabilities.md)`,
    );
  }
  return { ...inputs, hypervisorChecked: result.checked };
}

export async function profileCreate(inputs: VmProfileInputs): Promise<pulumi.dynamic.CreateResult> {
  return { id: inputs.spec.name, outs: await check(inputs) };
}

export async function profileDiff(olds: VmProfileOutputs, news: VmProfileInputs): Promise<pulumi.dynamic.DiffResult> {
  return { changes: JSON.stringify(olds.spec) !== JSON.stringify(news.spec), replaces: olds.spec.name !== news.spec.name ? ["spec"] : [] };
}

export async function profileUpdate(_olds: VmProfileOutputs, news: VmProfileInputs): Promise<pulumi.dynamic.UpdateResult> {
  return { outs: await check(news) };
}

/** What the dynamic-provider plugin runs for a VmProfile: its state names this module by path (provider-module.ts). */
export const provider: pulumi.dynamic.ResourceProvider = {
  create: (inputs) => profileCreate(inputs),
  diff: (_id, olds, news) => profileDiff(olds, news),
  update: (_id, olds, news) => profileUpdate(olds, news),
  delete: async () => undefined,
};

/** A VM profile: the hypervisor-independent shape of a VM; per-VM configs are rendered from it. */
export class VmProfile extends ModuleProviderResource {
  declare readonly hypervisorChecked: pulumi.Output<string[]>;

  constructor(name: string, args: { spec: pulumi.Input<ProfileModel> }, opts?: pulumi.CustomResourceOptions) {
    super("VmProfile", __filename, name, { ...args, hypervisorChecked: undefined }, opts);
  }
}
