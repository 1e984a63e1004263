// Debian VSE images: a root filesystem built by mmdebstrap from a release and a
// package list, booted with the host's kernel.
//
// The whole root filesystem becomes the initramfs (cpio newc, gzip), with an
// init that runs the job exactly as the busybox image's does. Why not an ext4
// disk plus a small switch_root initramfs: the rendered VM config
// (templates/*) carries only a kernel and an initrd, so an initramfs boots
// under every driver and template unchanged, and needs no block-device
// modules. The price is guest memory (the unpacked tree lives in RAM: about
// 110 MiB for the essential set plus a few small packages), which the schema's
// description of spec.base states.

import * as crypto from "crypto";
import * as fs from "fs";
import * as path from "path";
import * as zlib from "zlib";
import type { DebianModel, EnvironmentModel } from "../model/resolve";
import type { ImageFiles } from "../render/render";
import { BUSYBOX, fileDigest, hostKernel, imageJob, initScript, KernelInfo, markersFor, imageSlot, publishImage } from "./busybox";
import { cpioArchive, CpioEntry, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG } from "./cpio";
import { startProgress } from "./progress";

/** Bumped whenever the build, the layout or the init changes, so old cache entries are not reused. */
const BUILDER_VERSION = "debian-mmdebstrap-initramfs/1";
/** Where the host's static busybox goes in the guest: outside every Debian package's paths, so a listed "busybox" package cannot clash. */
const GUEST_BUSYBOX = "/usr/lib/vse/busybox";
const GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// The same rules as the schema: a definition that did not come through the loader is checked before anything reaches mmdebstrap.
const PACKAGE = /^[a-z0-9][a-z0-9+.-]{1,99}$/;
const MIRROR = /^https?:\/\/[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?(\/[A-Za-z0-9._~+/-]{0,200})?$/;
const RELEASES = ["bookworm", "trixie"];

export function checkDebian(d: DebianModel | undefined): DebianModel {
  if (!d) throw new Error('an Environment with base "debian" needs spec.debian (release and packages)');
  if (!RELEASES.includes(d.release)) throw new Error(`unknown Debian release ${JSON.stringify(d.release)}; expected one of ${RELEASES.join(", ")}`);
  for (const p of d.packages) if (!PACKAGE.test(p)) throw new Error(`invalid Debian package name ${JSON.stringify(p)}`);
  if (!MIRROR.test(d.mirror)) throw new Error(`invalid Debian mirror ${JSON.stringify(d.mirror)}; expected an http(s) URL`);
  return d;
}

/** Content address of a Debian image: what is installed, from where, the job (its argv and environment only when not warm), and the exact kernel and busybox bytes. Hashes only, builds nothing. */
export function debianImageId(env: EnvironmentModel, kernel: KernelInfo = hostKernel()): string {
  const d = checkDebian(env.debian);
  const identity = {
    builder: BUILDER_VERSION,
    base: env.base,
    // Sorted and de-duplicated again: a model built by hand must not get another id for the same set.
    debian: { release: d.release, packages: [...new Set(d.packages)].sort(), mirror: d.mirror },
    job: imageJob(env),
    kernel: fileDigest(kernel.path),
    busybox: fileDigest(BUSYBOX),
    ...(env.warm ? { warm: true } : {}),
  };
  return crypto.createHash("sha256").update(JSON.stringify(identity)).digest("hex");
}

/** mmdebstrap's argument vector: a minimal system plus the packages, without documentation (it would only cost guest memory). */
export function mmdebstrapArgs(d: DebianModel, target: string): string[] {
  checkDebian(d);
  const packages = [...new Set(d.packages)].sort();
  return [
    "--variant=essential",
    "--format=directory",
    ...(packages.length ? [`--include=${packages.join(",")}`] : []),
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--aptopt=Acquire::Retries=3",
    d.release,
    target,
    d.mirror,
  ];
}

/** Linux's dev_t encoding, as fs.Stats.rdev gives it. */
function major(rdev: number): number {
  return ((rdev >> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
}
function minor(rdev: number): number {
  return (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
}

/** Every file of root as cpio entries, in sorted order (so the same tree gives the same archive), owners and modes kept. */
export function treeEntries(root: string): CpioEntry[] {
  const entries: CpioEntry[] = [];
  const walk = (rel: string) => {
    const names = fs.readdirSync(path.join(root, rel)).sort();
    for (const name of names) {
      const r = rel ? `${rel}/${name}` : name;
      const full = path.join(root, r);
      const st = fs.lstatSync(full);
      const base = { path: r, mode: st.mode, uid: st.uid, gid: st.gid };
      const type = st.mode & 0o170000;
      if (type === S_IFDIR) {
        entries.push(base);
        walk(r);
      } else if (type === S_IFREG) {
        entries.push({ ...base, data: fs.readFileSync(full) });
      } else if (type === S_IFLNK) {
        entries.push({ ...base, data: Buffer.from(fs.readlinkSync(full)) });
      } else {
        // Device nodes, fifos and sockets carry no data; devices keep their numbers.
        entries.push({ ...base, rdevMajor: major(st.rdev), rdevMinor: minor(st.rdev) });
      }
    }
  };
  walk("");
  return entries;
}

/** Installed packages and versions, from dpkg's status file: what the image holds, recorded in image.json. */
export function installedPackages(root: string): Record<string, string> {
  const status = path.join(root, "var/lib/dpkg/status");
  const out: Record<string, string> = {};
  for (const stanza of fs.readFileSync(status, "utf8").split(/\n\n+/)) {
    const name = /^Package: (.+)$/m.exec(stanza)?.[1];
    const version = /^Version: (.+)$/m.exec(stanza)?.[1];
    if (name && version && /^Status: install ok installed$/m.test(stanza)) out[name] = version;
  }
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : 1)));
}

/** The initramfs: the root filesystem, busybox for the init's own needs, the console device and the generated /init. */
function initramfs(root: string, env: EnvironmentModel, id: string): Buffer {
  const entries = treeEntries(root).filter((e) => e.path !== "init" && e.path !== GUEST_BUSYBOX.slice(1));
  const have = new Set(entries.map((e) => e.path));
  const dir = (p: string): CpioEntry[] => (have.has(p) ? [] : [{ path: p, mode: S_IFDIR | 0o755 }]);
  entries.push(
    ...dir("usr"),
    ...dir("usr/lib"),
    ...dir("usr/lib/vse"),
    { path: GUEST_BUSYBOX.slice(1), mode: S_IFREG | 0o755, data: fs.readFileSync(BUSYBOX) },
    ...dir("dev"),
    ...dir("proc"),
    ...dir("sys"),
    ...dir("root"),
    ...dir("tmp"),
    { path: "init", mode: S_IFREG | 0o755, data: Buffer.from(initScript(env, markersFor(id), undefined, [], { busybox: GUEST_BUSYBOX, path: GUEST_PATH })) },
  );
  // The kernel opens /dev/console for init before anything is mounted.
  if (!have.has("dev/console")) entries.push({ path: "dev/console", mode: S_IFCHR | 0o600, rdevMajor: 5, rdevMinor: 1 });
  // Directories before their contents: the kernel's unpacker creates parents only from earlier entries.
  entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return zlib.gzipSync(cpioArchive(entries), { level: 6 });
}

export interface DebianBuildResult extends ImageFiles {
  built: boolean;
  /** Seconds mmdebstrap took, when it ran. */
  mmdebstrapSeconds?: number;
}

/** Builds the Debian image into the cache unless it is there already; returns where it is. */
export async function buildDebianImage(env: EnvironmentModel, cacheDir: string, kernel: KernelInfo = hostKernel()): Promise<DebianBuildResult> {
  const execa = require("execa") as typeof import("execa");
  const d = checkDebian(env.debian);
  const id = debianImageId(env, kernel);
  const slot = imageSlot(cacheDir, id);
  if (slot.cached) return { ...slot.ref, built: false };
  const { ref, dir, tmp } = slot;
  // mmdebstrap takes minutes: a line every 30 s says it is still going.
  const progress = startProgress(`building Debian ${d.release} image ${id.slice(0, 12)} for Environment ${env.name} (mmdebstrap)`);
  try {
    const root = path.join(tmp, "rootfs");
    const t0 = Date.now();
    try {
      await execa("mmdebstrap", mmdebstrapArgs(d, root), { all: true, env: { LC_ALL: "C.UTF-8" } });
    } catch (err) {
      const e = err as { code?: string; all?: string; shortMessage?: string };
      if (e.code === "ENOENT") throw new Error("mmdebstrap not found: install the Debian package mmdebstrap");
      throw new Error(
        `mmdebstrap failed for Environment ${env.name} (${d.release}: ${d.packages.join(" ") || "no extra packages"}): ${e.shortMessage}\n${(e.all ?? "").slice(-2000)}`,
      );
    }
    const mmdebstrapSeconds = (Date.now() - t0) / 1000;
    const packages = installedPackages(root);
    fs.copyFileSync(kernel.path, path.join(tmp, "vmlinuz"));
    fs.writeFileSync(path.join(tmp, "initrd.img"), initramfs(root, env, id));
    fs.rmSync(root, { recursive: true, force: true });
    publishImage(tmp, dir, { id, builder: BUILDER_VERSION, environment: env, kernel: kernel.release, mmdebstrapSeconds, installed: packages });
    progress.done();
    return { ...ref, built: true, mmdebstrapSeconds };
  } catch (err) {
    progress.failed();
    fs.rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
}
