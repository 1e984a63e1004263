import * as fs from "fs";
import * as path from "path";

/** A content id of an image: the sha256 of its identity (provider/image), 64 lower-case hex digits. */
export const IMAGE_ID_PATTERN = /^[0-9a-f]{64}$/;
const IMAGE_FILES = ["vmlinuz", "initrd.img"] as const;
export type ImageFile = (typeof IMAGE_FILES)[number];

/** What an image's image.json says about it, as far as site policy cares. */
export interface ImageMeta {
  id: string;
  base?: string;
  mirror?: string;
  kernel?: string;
}

export class ImageNotFound extends Error {}

/** Where a host's warm-launch snapshots live: beside its images, in the same store (drivers/qemu-warm.ts names them by key). */
export function snapshotRootOf(imagesRoot: string): string {
  return path.join(path.dirname(imagesRoot), "snapshots");
}

/**
 * The host's content-addressed image store, as the node agent sees it: VMs
 * boot only files from here, named by content id, never a path a request gives.
 */
export class ImageStore {
  constructor(readonly root: string) {}

  /** The real path of one file of an image; refuses ids and names outside the grammar, links, and anything not a regular file inside the store. */
  resolve(id: string, file: ImageFile): string {
    if (!IMAGE_ID_PATTERN.test(id)) throw new ImageNotFound(`image id ${JSON.stringify(id.slice(0, 80))} is not a content id (64 hex digits)`);
    if (!IMAGE_FILES.includes(file)) throw new ImageNotFound(`image file ${JSON.stringify(file)}: expected one of ${IMAGE_FILES.join(", ")}`);
    const p = path.join(this.root, id, file);
    let st: fs.Stats;
    try {
      st = fs.lstatSync(p);
    } catch {
      throw new ImageNotFound(`image ${id} is not in this host's image store (${this.root}): stage it first`);
    }
    if (!st.isFile()) throw new ImageNotFound(`image ${id}/${file} in the store is not a regular file`);
    // The store itself may sit behind a link; the file may not lead out of it.
    const real = fs.realpathSync(p);
    if (!real.startsWith(fs.realpathSync(this.root) + path.sep)) throw new ImageNotFound(`image ${id}/${file} leads outside the image store`);
    return real;
  }

  /** The image's metadata (written last when it was built), for the policy's base, mirror and kernel rules. */
  meta(id: string): ImageMeta {
    this.resolve(id, "vmlinuz");
    try {
      const m = JSON.parse(fs.readFileSync(path.join(this.root, id, "image.json"), "utf8")) as {
        environment?: { base?: string; debian?: { mirror?: string } };
        kernel?: string;
      };
      return { id, base: m.environment?.base, mirror: m.environment?.debian?.mirror, kernel: m.kernel };
    } catch {
      throw new ImageNotFound(`image ${id} has no readable image.json: it was not published completely`);
    }
  }
}
