// One entry point for every kind of VSE image: picks the builder by spec.base.
import type { EnvironmentModel } from "../model/resolve";
import type { ImageFiles } from "../render/render";
import { buildImage, hostKernel, ImageExtras, imageId, KernelInfo } from "./busybox";
import { buildDebianImage, debianImageId } from "./debian";

/** Extras (kernel modules, guest network) exist for busybox images only so far; a Debian image must not silently lack them. */
function noExtras(env: EnvironmentModel, extras?: ImageExtras): void {
  if (extras) throw new Error(`Environment ${env.name}: base "debian" images do not support kernel modules or the cluster network yet`);
}

/** The image's content address; hashes only (the Pulumi program calls it at plan time), never builds. */
export function environmentImageId(env: EnvironmentModel, kernel: KernelInfo = hostKernel(), extras?: ImageExtras): string {
  if (env.base !== "debian") return imageId(env, kernel, extras);
  noExtras(env, extras);
  return debianImageId(env, kernel);
}

/** Builds the environment's image into the cache unless it is there already. */
export async function buildEnvironmentImage(
  env: EnvironmentModel,
  cacheDir: string,
  kernel: KernelInfo = hostKernel(),
  extras?: ImageExtras,
): Promise<ImageFiles & { built: boolean }> {
  if (env.base !== "debian") return buildImage(env, cacheDir, kernel, extras);
  noExtras(env, extras);
  const { id, kernel: k, initrd, built } = await buildDebianImage(env, cacheDir, kernel);
  return { id, kernel: k, initrd, built };
}
