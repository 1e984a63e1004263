import * as pulumi from "@pulumi/pulumi";
import type { ProfileModel } from "../model/resolve";

export interface VmProfileInputs {
  /** The profile with units normalised and defaults filled in. */
  spec: ProfileModel;
}

export interface VmProfileOutputs extends VmProfileInputs {
  /** The hypervisor binary found on this host. */
  hypervisorBinary: string;
}

/** Fails early, before any VM is started, when the host lacks the profile's hypervisor. */
async function check(inputs: VmProfileInputs): Promise<VmProfileOutputs> {
  const { QEMU_BINARY } = require("../drivers/qemu") as typeof import("../drivers/qemu");
  const fs = require("fs") as typeof import("fs");
  const path = require("path") as typeof import("path");
  const binary = inputs.spec.hypervisor === "qemu" ? QEMU_BINARY : undefined;
  const dirs = (process.env.PATH ?? "").split(":").filter(Boolean);
  const found = binary && dirs.map((d) => path.join(d, binary)).find((p) => fs.existsSync(p));
  if (!found) {
    throw new Error(
      `VmProfile ${inputs.spec.name}: hypervisor "${inputs.spec.hypervisor}" needs ${binary ?? "a driver"}, not found on PATH (${dirs.join(":")}); install the Debian package qemu-system-x86`,
    );
  }
  return { ...inputs, hypervisorBinary: found };
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

const MODULE = __filename;

const provider: pulumi.dynamic.ResourceProvider = {
  create: (inputs) => require(MODULE).profileCreate(inputs),
  diff: (_id, olds, news) => require(MODULE).profileDiff(olds, news),
  update: (_id, olds, news) => require(MODULE).profileUpdate(olds, news),
  delete: async () => undefined,
};

/** A VM profile: the hypervisor-independent shape of a VM; per-VM configs are rendered from it. */
export class VmProfile extends pulumi.dynamic.Resource {
  declare readonly hypervisorBinary: pulumi.Output<string>;

  constructor(name: string, args: { spec: pulumi.Input<ProfileModel> }, opts?: pulumi.CustomResourceOptions) {
    super(provider, name, { ...args, hypervisorBinary: undefined }, { ...opts, hideDiffs: ["__provider"] }, "vse", "VmProfile");
  }
}
