// Types only: the package's index loads the whole SDK (automation API, closure serializer, TypeScript).
import type * as pulumi from "@pulumi/pulumi";
import type { EnvironmentModel } from "../model/resolve";
import type { ImageExtras } from "../image/busybox";
import { info } from "./engine-log";
import { ModuleProviderResource } from "./provider-module";

/** A warm-launch snapshot the Environment makes ahead (spec.warmAhead): its key and a VM config of the cluster that restores it. */
export interface SnapshotAhead {
  key: string;
  vm: string;
  config: string;
}

export interface EnvironmentInputs {
  /** The environment with defaults filled in, as the image is built from it. */
  spec: EnvironmentModel;
  /** Content address computed by the program; create checks it builds exactly this. */
  imageId: string;
  cacheDir: string;
  /** What a cluster adds to the image (the network driver and set-up); null for the plain image. */
  extras: ImageExtras | null;
  /** spec.warmAhead: the snapshots its clusters restore, made into <cacheDir>/snapshots at create and update (absent otherwise). */
  snapshots?: SnapshotAhead[];
}

export interface EnvironmentOutputs extends EnvironmentInputs {
  kernel: string;
  initrd: string;
  /** False when the image already was in the cache. */
  built: boolean;
  present: boolean;
}

type Args = { [K in keyof EnvironmentInputs]: pulumi.Input<EnvironmentInputs[K]> };

async function build(inputs: EnvironmentInputs): Promise<EnvironmentOutputs> {
  const { buildEnvironmentImage } = require("../image") as typeof import("../image");
  const img = await buildEnvironmentImage(inputs.spec, inputs.cacheDir, undefined, inputs.extras ?? undefined);
  if (img.id !== inputs.imageId) {
    throw new Error(
      `Environment ${inputs.spec.name}: built image ${img.id.slice(0, 12)} but the program planned ${inputs.imageId.slice(0, 12)}; the host kernel or busybox changed during the run, run again`,
    );
  }
  await makeSnapshots(inputs);
  return { ...inputs, kernel: img.kernel, initrd: img.initrd, built: img.built, present: true };
}

/** Boots one throw-away VM per snapshot not in the store yet, through the QEMU driver, as `vse warm` does. */
async function makeSnapshots(inputs: EnvironmentInputs): Promise<void> {
  if (!inputs.snapshots?.length) return;
  const path = require("path") as typeof import("path");
  const { restoreUriOfKey } = require("../drivers/qemu-warm") as typeof import("../drivers/qemu-warm");
  const { makeSnapshot } = require("../cli/warm") as typeof import("../cli/warm");
  const dir = path.join(inputs.cacheDir, "snapshots");
  for (const s of inputs.snapshots) {
    if (restoreUriOfKey(dir, s.key)) continue;
    const t0 = Date.now();
    const key = await makeSnapshot(
      inputs.cacheDir,
      s.vm,
      s.config,
      { command: inputs.spec.job.command, env: inputs.spec.job.env },
      300000,
      `Environment ${inputs.spec.name}`,
    );
    if (key !== s.key)
      throw new Error(
        `Environment ${inputs.spec.name}: made snapshot ${key.slice(0, 12)}, the program planned ${s.key.slice(0, 12)}; QEMU changed during the run, run again`,
      );
    await info(
      `Environment ${inputs.spec.name}: warm-launch snapshot ${key.slice(0, 12)} made ahead (VM ${s.vm}'s profile) in ${((Date.now() - t0) / 1000).toFixed(1)} s`,
    );
  }
}

/** Whether every snapshot it was asked to make is in the store. */
function snapshotsPresent(props: EnvironmentInputs): boolean {
  const path = require("path") as typeof import("path");
  const { restoreUriOfKey } = require("../drivers/qemu-warm") as typeof import("../drivers/qemu-warm");
  return (props.snapshots ?? []).every((s) => restoreUriOfKey(path.join(props.cacheDir, "snapshots"), s.key) !== undefined);
}

export async function envCreate(inputs: EnvironmentInputs): Promise<pulumi.dynamic.CreateResult> {
  return { id: inputs.imageId, outs: await build(inputs) };
}

export async function envDiff(olds: EnvironmentOutputs, news: EnvironmentInputs): Promise<pulumi.dynamic.DiffResult> {
  const replaces = olds.imageId !== news.imageId || olds.cacheDir !== news.cacheDir ? ["imageId"] : [];
  const snapshotKeys = (i: EnvironmentInputs) => JSON.stringify((i.snapshots ?? []).map((s) => s.key));
  const changes = replaces.length > 0 || JSON.stringify(olds.spec) !== JSON.stringify(news.spec) || snapshotKeys(olds) !== snapshotKeys(news) || !olds.present;
  return { changes, replaces };
}

export async function envUpdate(_olds: EnvironmentOutputs, news: EnvironmentInputs): Promise<pulumi.dynamic.UpdateResult> {
  return { outs: await build(news) };
}

export async function envRead(id: string, props: EnvironmentOutputs): Promise<pulumi.dynamic.ReadResult> {
  const fs = require("fs") as typeof import("fs");
  return { id, props: { ...props, present: fs.existsSync(props.kernel) && fs.existsSync(props.initrd) && snapshotsPresent(props) } };
}

/** What the dynamic-provider plugin runs for an Environment: its state names this module by path (provider-module.ts). */
export const provider: pulumi.dynamic.ResourceProvider = {
  create: (inputs) => envCreate(inputs),
  diff: (_id, olds, news) => envDiff(olds, news),
  update: (_id, olds, news) => envUpdate(olds, news),
  read: (id, props) => envRead(id, props),
  // Images are a content-addressed cache shared by stacks; deleting the resource keeps them.
  delete: async () => undefined,
};

/** A VSE: its image is built (or found in the cache) by content address. */
export class Environment extends ModuleProviderResource {
  declare readonly imageId: pulumi.Output<string>;
  declare readonly kernel: pulumi.Output<string>;
  declare readonly initrd: pulumi.Output<string>;

  constructor(name: string, args: Args, opts?: pulumi.CustomResourceOptions) {
    super("Environment", __filename, name, { ...args, kernel: undefined, initrd: undefined, built: undefined, present: undefined }, opts);
  }
}
