import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as zlib from "zlib";
import { DriverOps } from "../../provider/drivers/driver";
import { vmPaths } from "../../provider/drivers/qemu";
import { qemuDriver } from "../../provider/drivers/qemu-driver";
import { clusterKey } from "../../provider/drivers/network";
import { imageId, imageRef, imageResolver, markersFor } from "../../provider/image/busybox";
import { debianImageId, mmdebstrapArgs } from "../../provider/image/debian";
import { buildEnvironmentImage, environmentImageId } from "../../provider/image";
import type { DefinitionProblem } from "../../provider/model/errors";
import { Definitions, loadText } from "../../provider/model/load";
import { environmentModel, EnvironmentModel } from "../../provider/model/resolve";
import { planClusters } from "../../provider/program/plan";
import { envCreate } from "../../provider/resources/environment";
import { vmModel, waitJob } from "../drivers/helpers";

const execa = require("execa") as typeof import("execa");

const NAME = "vse-debian-bc";
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "vse-debian-"));
const cache = path.join(tmp, "cache");
const ops: DriverOps[] = [];

afterAll(async () => {
  // Whatever happened above, no QEMU of this test outlives it.
  for (const o of ops) await o.destroy(NAME).catch(() => undefined);
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Loads one Environment document the way `vse` does (schema, defaults, normalisation). */
function load(spec: string): { model?: EnvironmentModel; problems: DefinitionProblem[] } {
  const defs: Definitions = { environments: new Map(), profiles: new Map(), clusters: new Map() };
  const problems: DefinitionProblem[] = [];
  loadText(`apiVersion: vse.dev/v1\nkind: Environment\nmetadata: { name: deb }\nspec:\n${spec}`, "env.yaml", defs, problems);
  const l = defs.environments.get("deb");
  return { model: l && !problems.length ? environmentModel(l) : undefined, problems };
}

const JOB = `  job: { command: ["/bin/sh", "-c", "echo '2+3' | bc && command -v bc"], afterJob: power-off }\n`;
const bc = load(`  base: debian\n  debian: { packages: [bc] }\n${JOB}`).model!;

test("a debian definition is normalised: defaults filled, packages sorted and de-duplicated, so order never changes the id", () => {
  expect(bc.debian).toEqual({ release: "bookworm", packages: ["bc"], mirror: "http://deb.debian.org/debian" });
  const a = load(`  base: debian\n  debian: { packages: [jq, bc, jq] }\n${JOB}`).model!;
  const b = load(`  base: debian\n  debian: { release: bookworm, packages: [bc, jq], mirror: "http://deb.debian.org/debian" }\n${JOB}`).model!;
  expect(a.debian!.packages).toEqual(["bc", "jq"]);
  expect(environmentImageId(a)).toBe(environmentImageId(b));
  // Another package list, release or mirror is another image.
  expect(environmentImageId(a)).not.toBe(environmentImageId(bc));
  const trixie = load(`  base: debian\n  debian: { release: trixie, packages: [bc] }\n${JOB}`).model!;
  const mirror = load(`  base: debian\n  debian: { packages: [bc], mirror: "http://ftp.de.debian.org/debian" }\n${JOB}`).model!;
  const ids = new Set([bc, trixie, mirror].map((m) => environmentImageId(m)));
  expect(ids.size).toBe(3);
  // A busybox definition keeps its busybox id (and gets no debian field).
  const bb = load(JOB).model!;
  expect(bb.debian).toBeUndefined();
  expect(environmentImageId(bb)).toBe(imageId(bb));
  expect(environmentImageId(bc)).toBe(debianImageId(bc));
});

test("the schema requires spec.debian with base debian, refuses it otherwise, and refuses bad package names, at their location", () => {
  expect(load(`  base: debian\n${JOB}`).problems.map((p) => [p.field, p.message])).toEqual([["spec.debian", 'required field "debian" is missing']]);
  expect(load(`  debian: { packages: [bc] }\n${JOB}`).problems.map((p) => p.field)).toEqual(["spec.debian"]);
  const bad = load(`  base: debian\n  debian: { packages: [bc, "bc;reboot"] }\n${JOB}`).problems;
  expect(bad).toMatchObject([{ file: "env.yaml", line: 6, field: "spec.debian.packages.1" }]);
  expect(bad[0].message).toContain("Debian package name");
});

test("planning a debian cluster only hashes: the plan's image id is the debian one and nothing is built", async () => {
  const empty = path.join(tmp, "plan-cache");
  const defs = path.join(tmp, "debian-cluster.yaml");
  fs.writeFileSync(
    defs,
    [
      `apiVersion: vse.dev/v1\nkind: Environment\nmetadata: { name: deb }\nspec:\n  base: debian\n  debian: { packages: [bc] }\n${JOB}`,
      "apiVersion: vse.dev/v1\nkind: VmProfile\nmetadata: { name: big }\nspec: { memory: 512MiB, accel: tcg }\n",
      "apiVersion: vse.dev/v1\nkind: VirtualCluster\nmetadata: { name: deb-cluster }\nspec: { environment: deb, profile: big }\n",
    ].join("---\n"),
  );
  const [plan] = await planClusters([defs], empty, { resolveAccel: async () => "tcg" });
  expect(plan.model.environment.debian).toEqual({ release: "bookworm", packages: ["bc"], mirror: "http://deb.debian.org/debian" });
  expect(plan.imageId).toBe(debianImageId(plan.model.environment));
  expect(plan.vms[0].config).toContain(`${plan.imageId}/initrd.img`);
  expect(fs.existsSync(path.join(empty, "images"))).toBe(false);
});

test("a hand-made model with a bad package name or mirror never reaches mmdebstrap", () => {
  const withDebian = (d: Partial<NonNullable<EnvironmentModel["debian"]>>) => ({ ...bc.debian!, ...d });
  expect(() => mmdebstrapArgs(withDebian({ packages: ["--root-owner-group"] }), "/x")).toThrow('invalid Debian package name "--root-owner-group"');
  expect(() => mmdebstrapArgs(withDebian({ packages: ["bc,jq"] }), "/x")).toThrow("invalid Debian package name");
  expect(() => mmdebstrapArgs(withDebian({ mirror: "file:///etc" }), "/x")).toThrow("invalid Debian mirror");
  expect(() => environmentImageId({ ...bc, debian: undefined })).toThrow("needs spec.debian");
  // Extras are busybox-only for now: asking a Debian image for a network must fail, not boot without one.
  expect(() => environmentImageId(bc, undefined, { network: true })).toThrow('base "debian" images do not support');
  expect(mmdebstrapArgs(withDebian({ packages: ["jq", "bc"] }), "/x")).toEqual(
    expect.arrayContaining(["--include=bc,jq", "bookworm", "/x", "http://deb.debian.org/debian"]),
  );
});

test("a real Debian VSE: mmdebstrap builds it, QEMU boots it, the job uses a listed package; a rebuild is a cache hit", async () => {
  const t0 = Date.now();
  const img = await buildEnvironmentImage(bc, cache);
  const buildSeconds = (Date.now() - t0) / 1000;
  const meta = JSON.parse(fs.readFileSync(path.join(path.dirname(img.initrd), "image.json"), "utf8"));
  // Seen in CI logs: how long a real build takes here.
  console.log(
    `debian image ${img.id.slice(0, 12)}: built in ${buildSeconds.toFixed(1)} s (mmdebstrap ${meta.mmdebstrapSeconds} s), initrd ${(fs.statSync(img.initrd).size / 2 ** 20).toFixed(1)} MiB`,
  );
  expect(img.built).toBe(true);
  expect(img.id).toBe(environmentImageId(bc));
  expect(meta.installed.bc).toMatch(/^\d/);

  // The initramfs holds Debian's bc, the init and the busybox the init uses.
  const listing = await execa("cpio", ["-t", "--quiet"], { input: zlib.gunzipSync(fs.readFileSync(img.initrd)) });
  const files = new Set(listing.stdout.split("\n"));
  for (const f of ["init", "usr/bin/bc", "usr/lib/vse/busybox", "dev/console", "var/lib/dpkg/status"]) expect(files).toContain(f);

  // Same definition (even with the packages listed again, in another order): no rebuild, same files.
  const mtime = fs.statSync(img.initrd).mtimeMs;
  const again = await buildEnvironmentImage(load(`  base: debian\n  debian: { packages: [bc, bc] }\n${JOB}`).model!, cache);
  expect(again).toEqual({ ...img, built: false });
  expect(fs.statSync(img.initrd).mtimeMs).toBe(mtime);
  expect(fs.readdirSync(path.join(cache, "images")).filter((f) => !f.startsWith("."))).toEqual([img.id]);
  // The Environment resource builds through the same dispatch: it finds the Debian image, and would refuse any other id.
  const created = await envCreate({ spec: bc, imageId: img.id, cacheDir: cache, extras: null });
  expect(created.outs).toMatchObject({ kernel: img.kernel, initrd: img.initrd, built: false, present: true });

  // The unpacked tree lives in guest RAM (see spec.base), so this VM gets 512 MiB.
  const vm = vmModel(NAME, "qemu");
  vm.profile.memoryMiB = 512;
  const config = qemuDriver.render({ cluster: "deb", clusterKey: clusterKey("vse", "test", "deb"), vm, image: imageRef(img.id), accel: "tcg", kernelArgs: [] });
  const host = await qemuDriver.open({ stateDir: path.join(tmp, "host"), resolveImage: imageResolver(cache) });
  ops.push(host);
  await host.create({ name: NAME, config });
  const boot = Date.now();
  await host.start(NAME);
  const job = await waitJob(vmPaths(path.join(tmp, "host", NAME)).console, markersFor(img.id), 240000);
  console.log(`debian image booted to its job's result in ${((Date.now() - boot) / 1000).toFixed(1)} s under TCG`);
  expect(job.exitCode).toBe(0);
  // bc is Debian's: the Debian init installs no busybox applets, so /usr/bin/bc comes from the package.
  expect((job.output ?? "").replace(/\r/g, "")).toBe("5\n/usr/bin/bc\n");
  await host.destroy(NAME);
  expect((await host.status(NAME)).state).toBe("absent");
});
