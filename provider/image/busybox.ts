import * as crypto from "crypto";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as zlib from "zlib";
import type { EnvironmentModel } from "../model/resolve";
import type { ImageFiles, ImageRef } from "../render/render";
import { cpioArchive, CpioEntry, S_IFCHR, S_IFDIR, S_IFREG } from "./cpio";
import { startProgress } from "./progress";

/** Bumped whenever the image layout or init changes, so old cache entries are not reused. */
const BUILDER_VERSION = "busybox-initramfs/1";
export const BUSYBOX = "/bin/busybox";

export interface KernelInfo {
  path: string;
  release: string;
}

/** The newest Debian kernel installed on this host (linux-image-amd64). */
export function hostKernel(): KernelInfo {
  const files = fs.existsSync("/boot") ? fs.readdirSync("/boot").filter((f) => /^vmlinuz-/.test(f)) : [];
  if (!files.length) throw new Error("no kernel in /boot: install the Debian package linux-image-amd64 (npm run setup does)");
  const release = files
    .map((f) => f.slice("vmlinuz-".length))
    .sort((a, b) => a.localeCompare(b, "en", { numeric: true }))
    .pop()!;
  return { path: `/boot/vmlinuz-${release}`, release };
}

const fileDigests = new Map<string, string>();
export function fileDigest(file: string): string {
  const st = fs.statSync(file);
  const key = `${file}:${st.size}:${st.mtimeMs}`;
  let d = fileDigests.get(key);
  if (!d) {
    d = crypto.createHash("sha256").update(fs.readFileSync(file)).digest("hex");
    fileDigests.set(key, d);
  }
  return d;
}

/** Markers the guest prints around the job's output; unique per image so a job cannot fake them by accident. */
export interface JobMarkers {
  begin: string;
  end: string; // followed by " status=<n>=="
}

export function markersFor(imageId: string): JobMarkers {
  const tag = imageId.slice(0, 12);
  return { begin: `==vse-job:${tag}:begin==`, end: `==vse-job:${tag}:end` };
}

/** What a warm image's guest prints once it waits for its identity: the point a snapshot is taken. */
export function readyMarker(imageId: string): string {
  return `==vse-job:${imageId.slice(0, 12)}:ready==`;
}

/** A job as a warm guest is handed it: its argv and environment. */
export interface HandedJob {
  command: string[];
  env: Record<string, string>;
}

/**
 * What the node agent writes to a warm guest's control port (ttyS1): its name
 * and MAC ("-" without a NIC), then its job as one base64 line of shell text
 * (`set --` with every argument quoted, `export` of every variable), which the
 * guest decodes once and evaluates: the quoting makes each argument and value
 * arrive as it was, whatever its bytes (but NUL), with one decode in the guest.
 */
export function identityLine(name: string, mac: string | undefined, job: HandedJob): string {
  const script = [`set -- ${job.command.map(shQuote).join(" ")}`, ...Object.entries(job.env).map(([k, v]) => `export ${k}=${shQuote(v)}`)].join("\n");
  return `vse-identity ${name} ${mac ?? "-"}\nvse-job ${Buffer.from(script, "utf8").toString("base64")}\n`;
}

/** The parts of a job that are in an image: a warm image takes its argv and environment from the agent, so one snapshot serves any job. */
export function imageJob(env: EnvironmentModel): { command?: string[]; env?: Record<string, string>; afterJob: string } {
  return env.warm ? { afterJob: env.job.afterJob } : { command: env.job.command, env: env.job.env, afterJob: env.job.afterJob };
}

/**
 * A warm guest's wait for its identity, also what a restored snapshot resumes
 * from: the control port is opened before "ready" is printed, so no line is
 * lost; the address comes from the MAC (VM index in its last two octets, as
 * provider/drivers/network.ts makes them).
 */
function warmInit(markers: { ready: string }, bb: string): string[] {
  return [
    "# warm launch: wait for the identity the node agent hands over, also after a restore from a snapshot.",
    "exec 3</dev/ttyS1",
    `echo ${shQuote(markers.ready)}`,
    'while read -r vse_tag vse_name vse_mac <&3; do [ "$vse_tag" = vse-identity ] && break; done',
    `${bb} hostname "$vse_name"`,
    'if [ -n "$vse_mac" ] && [ "$vse_mac" != - ]; then',
    `  ${bb} ip link set eth0 address "$vse_mac"`,
    `  set -- $(echo "$vse_mac" | ${bb} tr : ' ')`,
    "  vse_n=$(( (0x$5 << 8 | 0x$6) + 1 ))",
    '  vse_ip="10.77.$((vse_n >> 8)).$((vse_n & 255))/16"',
    "fi",
    "# then its job: one base64 line of shell text (quoted arguments, exports), evaluated once.",
    "while read -r vse_tag vse_b64 <&3; do",
    `  [ "$vse_tag" = vse-job ] && { eval "$(echo "$vse_b64" | ${bb} base64 -d)"; break; }`,
    "done",
    "exec 3<&-",
  ];
}

/**
 * Opt-in additions to an image. Without them the image, its init and its id
 * are exactly what they were before extras existed.
 */
export interface ImageExtras {
  /** Kernel modules to load at boot, by name (e.g. "virtio_net"); their dependencies come along, in modules.dep order. */
  modules?: string[];
  /** Configure eth0 from "vse.ip=ADDR/PREFIX" on the kernel command line; no default route, so nothing outside the segment is reachable. */
  network?: boolean;
}

/** Module files (relative to /lib/modules/<release>/) to load for names, dependencies first, each once. */
export function moduleLoadOrder(names: string[], release: string, modulesRoot = "/lib/modules"): string[] {
  const depFile = path.join(modulesRoot, release, "modules.dep");
  if (!fs.existsSync(depFile)) throw new Error(`${depFile} not found: install the modules of kernel ${release} (linux-image-amd64)`);
  const deps = new Map<string, string[]>();
  for (const line of fs.readFileSync(depFile, "utf8").split("\n")) {
    const m = /^([^:]+):\s*(.*)$/.exec(line);
    if (m) deps.set(m[1], m[2].split(/\s+/).filter(Boolean));
  }
  const byName = new Map(
    [...deps.keys()].map((f) => [
      path
        .basename(f)
        .replace(/\.ko(\.[a-z]+)?$/, "")
        .replace(/-/g, "_"),
      f,
    ]),
  );
  const order: string[] = [];
  // modules.dep lists every dependency of a module, nearest first; loading them deepest first satisfies each in turn.
  const visit = (file: string, seen: Set<string>) => {
    if (order.includes(file)) return;
    if (seen.has(file)) throw new Error(`modules.dep has a cycle through ${file}`);
    seen.add(file);
    for (const d of deps.get(file) ?? []) visit(d, seen);
    order.push(file);
  };
  for (const name of names) {
    const file = byName.get(name.replace(/-/g, "_"));
    if (!file) throw new Error(`kernel ${release} has no module ${name} (is it built in, or misspelt?)`);
    if (/\.ko\.[a-z]+$/.test(file)) throw new Error(`${file} is compressed; busybox insmod loads plain .ko files only`);
    visit(file, new Set());
  }
  return order;
}

/** Content address of an environment's image: its definition plus the exact kernel and busybox bytes. */
export function imageId(env: EnvironmentModel, kernel: KernelInfo = hostKernel(), extras?: ImageExtras): string {
  const identity = {
    builder: BUILDER_VERSION,
    base: env.base,
    job: imageJob(env),
    kernel: fileDigest(kernel.path),
    busybox: fileDigest(BUSYBOX),
    ...(env.warm ? { warm: true } : {}),
    // Only present when asked for, so existing images keep their ids.
    ...(extras ? { extras: extrasIdentity(extras, kernel) } : {}),
  };
  return crypto.createHash("sha256").update(JSON.stringify(identity)).digest("hex");
}

function extrasIdentity(extras: ImageExtras, kernel: KernelInfo) {
  const modules = moduleLoadOrder(extras.modules ?? [], kernel.release).map((f) => ({
    file: f,
    digest: fileDigest(path.join("/lib/modules", kernel.release, f)),
  }));
  return { modules, network: !!extras.network };
}

/** An image's content id: the 64 lower-case hex digits of a sha256 (imageId, debianImageId). */
export const IMAGE_ID = /^[0-9a-f]{64}$/;

/** The files of an image a config may name; nothing else in the store can be referred to. */
export type ImageFile = "vmlinuz" | "initrd.img";

/**
 * How a rendered config names an image's kernel and initramfs: references into
 * the node agent's own image store ("image:<id>/vmlinuz"), never host paths.
 * The agent resolves them (imageResolver); the id is the content address.
 */
export function imageRef(id: string): ImageRef {
  if (!IMAGE_ID.test(id)) throw new Error(`image id ${JSON.stringify(id)} is not 64 lower-case hex digits`);
  return { id, kernel: `image:${id}/vmlinuz`, initrd: `image:${id}/initrd.img` };
}

/** Where an image's files really are in a cache directory: for the builder, the KVM probe and whoever boots it. */
export function imageFiles(cacheDir: string, id: string): ImageFiles {
  const dir = path.join(cacheDir, "images", id);
  return { id, kernel: path.join(dir, "vmlinuz"), initrd: path.join(dir, "initrd.img") };
}

/**
 * Resolves image references against the image store in cacheDir: the id must
 * be a content id, the image complete (its image.json is written last) and the
 * file present. Throws otherwise, naming what is missing.
 */
export function imageResolver(cacheDir: string): (id: string, file: ImageFile) => string {
  return (id, file) => {
    if (!IMAGE_ID.test(id)) throw new Error(`image id ${JSON.stringify(id)} is not 64 lower-case hex digits`);
    if (file !== "vmlinuz" && file !== "initrd.img") throw new Error(`an image has no file ${JSON.stringify(file)}`);
    const files = imageFiles(cacheDir, id);
    const dir = path.dirname(files.kernel);
    if (!fs.existsSync(path.join(dir, "image.json"))) throw new Error(`image ${id} is not in the image store ${path.join(cacheDir, "images")}`);
    const real = file === "vmlinuz" ? files.kernel : files.initrd;
    if (!fs.existsSync(real)) throw new Error(`image ${id} in the image store has no ${file}`);
    return real;
  };
}

/** The image store a process uses when it is not told one: the default cache directory (~/.cache/vse-provider). */
export const DEFAULT_IMAGE_CACHE = path.join(os.homedir(), ".cache", "vse-provider");

/** Quotes a word for busybox sh; the guest's argv comes out exactly as declared. */
export function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Init lines for extras: load the modules, then bring up eth0 with the address the kernel command line gives. */
function extrasInit(extras: ImageExtras, moduleFiles: string[], bb: string, warm: string[] = []): string[] {
  const lines = moduleFiles.map((f) => `${bb} insmod /lib/modules/${path.basename(f)}`);
  lines.push(...warm);
  if (extras.network) {
    lines.push(
      // A warm guest has its address from its MAC already; a cold one reads it from the kernel command line.
      `${warm.length ? '[ -n "$vse_ip" ] || ' : ""}vse_ip=$(${bb} sed -n 's/.*vse[.]ip=\\([^ ]*\\).*/\\1/p' /proc/cmdline)`,
      `${bb} ip link set lo up`,
      `if [ -n "$vse_ip" ]; then ${bb} ip link set eth0 up && ${bb} ip addr add "$vse_ip" dev eth0; fi`,
    );
  }
  return lines;
}

/**
 * How an init runs in a root filesystem that is not the busybox image's own
 * (a Debian image). Without it the script is byte for byte what it always was.
 */
export interface InitOptions {
  /** Where busybox is in the guest (it mounts, syncs and powers off); default /bin/busybox. */
  busybox?: string;
  /** The guest's PATH; when set, busybox applets are not installed (the guest has its own commands). */
  path?: string;
}

export function initScript(env: EnvironmentModel, markers: JobMarkers, extras?: ImageExtras, moduleFiles: string[] = [], options: InitOptions = {}): string {
  const bb = options.busybox ?? BUSYBOX;
  // A warm guest is handed its argv and environment with its identity (warmInit); a cold one has them here.
  const envExports = env.warm ? [] : Object.entries(env.job.env).map(([k, v]) => `export ${k}=${shQuote(v)}`);
  const after =
    env.job.afterJob === "power-off"
      ? ["# power-off: QEMU runs with -no-reboot, so a reboot ends the VM.", `${bb} sync`, `${bb} reboot -f`]
      : ["# stay-up: keep the guest running for inspection and updates.", `while :; do ${bb} sleep 3600; done`];
  return [
    `#!${bb} sh`,
    "# Generated by vse-provider; runs the VSE's job and prints its result between markers.",
    `${bb} mount -t proc proc /proc`,
    `${bb} mount -t sysfs sys /sys`,
    `${bb} mount -t devtmpfs dev /dev 2>/dev/null`,
    ...(options.path === undefined ? [`${bb} --install -s /bin`, "export PATH=/bin:/sbin HOME=/root"] : [`export PATH=${options.path} HOME=/root`]),
    ...(extras || env.warm
      ? extrasInit(extras ?? {}, moduleFiles, bb, env.warm ? warmInit({ ready: markers.begin.replace(/:begin==$/, ":ready==") }, bb) : [])
      : []),
    ...envExports,
    ...(env.warm ? [] : [`set -- ${env.job.command.map(shQuote).join(" ")}`]),
    `echo ${shQuote(markers.begin)}`,
    `"$@" </dev/null 2>&1`,
    "status=$?",
    `echo "${markers.end} status=$status=="`,
    ...after,
    "",
  ].join("\n");
}

function initramfs(env: EnvironmentModel, markers: JobMarkers, extras?: ImageExtras, kernel?: KernelInfo): Buffer {
  const dir = (p: string): CpioEntry => ({ path: p, mode: S_IFDIR | 0o755 });
  const entries: CpioEntry[] = [
    dir("bin"),
    dir("sbin"),
    dir("dev"),
    { path: "dev/console", mode: S_IFCHR | 0o600, rdevMajor: 5, rdevMinor: 1 },
    dir("proc"),
    dir("sys"),
    dir("tmp"),
    dir("root"),
    { path: "bin/busybox", mode: S_IFREG | 0o755, data: fs.readFileSync(BUSYBOX) },
  ];
  const moduleFiles = extras && kernel ? moduleLoadOrder(extras.modules ?? [], kernel.release) : [];
  if (moduleFiles.length) {
    entries.push(dir("lib"), dir("lib/modules"));
    for (const f of moduleFiles) {
      entries.push({ path: `lib/modules/${path.basename(f)}`, mode: S_IFREG | 0o644, data: fs.readFileSync(path.join("/lib/modules", kernel!.release, f)) });
    }
  }
  entries.push({ path: "init", mode: S_IFREG | 0o755, data: Buffer.from(initScript(env, markers, extras, moduleFiles)) });
  // Fixed gzip settings and no timestamps: the same inputs give the same bytes.
  return zlib.gzipSync(cpioArchive(entries), { level: 6 });
}

/**
 * An image's place in the cache: where it goes, whether it is there complete
 * (its image.json is written last), and, when not, a fresh temp dir beside it
 * to build in, so that publishImage can move it in with one rename.
 */
export function imageSlot(
  cacheDir: string,
  id: string,
): { ref: ImageFiles; dir: string; cached: true } | { ref: ImageFiles; dir: string; cached: false; tmp: string } {
  const ref = imageFiles(cacheDir, id);
  const dir = path.dirname(ref.kernel);
  if (fs.existsSync(path.join(dir, "image.json"))) return { ref, dir, cached: true };
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  return { ref, dir, cached: false, tmp: fs.mkdtempSync(path.join(path.dirname(dir), `.${id.slice(0, 12)}-`)) };
}

/** Writes the image's metadata and moves it from its temp dir into the cache in one rename, so a reader never sees half an image. */
export function publishImage(tmp: string, dir: string, meta: object): void {
  fs.writeFileSync(path.join(tmp, "image.json"), JSON.stringify(meta, null, 2));
  try {
    fs.renameSync(tmp, dir);
  } catch (err) {
    // Another build of the same content won the race: theirs is as good as ours.
    if (!fs.existsSync(path.join(dir, "image.json"))) throw err;
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** Builds the image into the cache unless it is there already; returns where its files are (real paths, not references). */
export function buildImage(env: EnvironmentModel, cacheDir: string, kernel: KernelInfo = hostKernel(), extras?: ImageExtras): ImageFiles & { built: boolean } {
  const id = imageId(env, kernel, extras);
  const slot = imageSlot(cacheDir, id);
  if (slot.cached) return { ...slot.ref, built: false };
  const { ref, dir, tmp } = slot;
  const progress = startProgress(`building busybox image ${id.slice(0, 12)} for Environment ${env.name}`);
  try {
    fs.copyFileSync(kernel.path, path.join(tmp, "vmlinuz"));
    fs.writeFileSync(path.join(tmp, "initrd.img"), initramfs(env, markersFor(id), extras, kernel));
    publishImage(tmp, dir, { id, builder: BUILDER_VERSION, environment: env, kernel: kernel.release, ...(extras ? { extras } : {}) });
  } catch (err) {
    progress.failed();
    fs.rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  progress.done();
  return { ...ref, built: true };
}
