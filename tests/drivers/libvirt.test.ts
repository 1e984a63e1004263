import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { DriverOps } from "../../provider/drivers/driver";
import { libvirtDriver, listDomains, virsh } from "../../provider/drivers/libvirt";
import { clusterKey, clusterNetwork, domainName, nicsFor } from "../../provider/drivers/network";
import { buildImage, imageRef, imageResolver, markersFor } from "../../provider/image/busybox";
import { environment, lastTick, readText, sleep, vmModel, waitFor, waitJob } from "./helpers";
import { libvirtdForTest, libvirtdUp } from "../support/libvirtd";

const NAME = "vse-drv-libvirt";
const KEY = clusterKey("vse", "test", "drv-lv");
/** libvirt domains are named per cluster key, so two stacks sharing a libvirtd never touch each other's VMs. */
const DOMAIN = domainName(KEY, NAME);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "vse-libvirt-driver-"));
let ops: DriverOps | undefined;

let stopDaemons: (() => Promise<void>) | undefined;

// Starts virtlogd and libvirtd with the settings this machine needs, or finds them running.
beforeAll(async () => {
  stopDaemons = await libvirtdForTest();
});

test("scripts/libvirtd-up.sh is idempotent: a second run keeps qemu.conf and the running daemon", async () => {
  const conf = fs.readFileSync("/etc/libvirt/qemu.conf", "utf8");
  const pid = fs.readFileSync("/var/run/libvirtd.pid", "utf8");
  expect(await libvirtdUp()).toContain("libvirtd answers on qemu:///system");
  expect(fs.readFileSync("/etc/libvirt/qemu.conf", "utf8")).toBe(conf);
  expect(fs.readFileSync("/var/run/libvirtd.pid", "utf8")).toBe(pid);
  expect(conf.match(/^security_driver = "none"$/gm)).toHaveLength(1);
  expect(conf.match(/^dynamic_ownership = 0$/gm)).toHaveLength(1);
});

afterAll(async () => {
  // Whatever happened above, the domain is gone afterwards.
  if (ops) await ops.destroy(NAME).catch(() => undefined);
  if (stopDaemons) await stopDaemons();
  fs.rmSync(tmp, { recursive: true, force: true });
});

test("libvirt driver: the VSE image boots as a domain of type qemu, runs its job, suspends, resumes, stops and is undefined", async () => {
  const env = environment("drv-libvirt", ["/bin/sh", "-c", "echo $((2+3)); (sleep 1; i=0; while :; do echo tick $i; i=$((i+1)); sleep 1; done) &"]);
  const img = buildImage(env, path.join(tmp, "cache"));
  const config = libvirtDriver.render({
    cluster: "drv-lv",
    clusterKey: KEY,
    vm: vmModel(NAME, "libvirt"),
    image: imageRef(img.id),
    accel: "tcg",
    kernelArgs: [],
    network: clusterNetwork(KEY),
  });
  expect(config).toContain("<domain type='qemu'>");
  expect(config).toContain(`<name>${DOMAIN}</name>`);

  ops = await libvirtDriver.open({ stateDir: path.join(tmp, "state"), resolveImage: imageResolver(path.join(tmp, "cache")), domainPrefix: `vse-${KEY}-` });
  // The driver writes the console where it chooses; the config only says agent:console.
  const consoleLog = path.join(tmp, "state", NAME, "console.log");
  expect(await listDomains()).not.toContain(DOMAIN);
  await ops.create({ name: NAME, config });
  expect(await ops.status(NAME)).toMatchObject({ state: "stopped", detail: "shut off" });
  // libvirt kept what the template said, with the image store's files and the driver's console file: direct kernel boot, the cluster NIC with its MAC.
  const defined = await virsh(["dumpxml", DOMAIN]);
  expect(defined).toContain(`<kernel>${img.kernel}</kernel>`);
  expect(defined).toContain(`<source path='${consoleLog}'`);
  expect(defined).toContain(`<mac address='${nicsFor(KEY, 0)[0].mac}'/>`);
  expect(defined).toMatch(/<interface type='mcast'>/);
  await ops.start(NAME);
  expect(await ops.status(NAME)).toMatchObject({ state: "running", memoryMiB: 128, vcpus: 1 });

  const job = await waitJob(consoleLog, markersFor(img.id), 120000);
  expect(job.exitCode).toBe(0);
  expect(job.output).toMatch(/^5\n/);

  await waitFor("ticks", () => lastTick(readText(consoleLog)) >= 1, 30000);
  await ops.pause(NAME);
  expect(await ops.status(NAME)).toMatchObject({ state: "paused", detail: "paused" });
  const pausedAt = lastTick(readText(consoleLog));
  await sleep(2500);
  expect(lastTick(readText(consoleLog))).toBe(pausedAt);
  await ops.resume(NAME);
  expect((await ops.status(NAME)).state).toBe("running");
  await waitFor("ticks after resume", () => lastTick(readText(consoleLog)) > pausedAt, 30000);

  const t0 = Date.now();
  // No ACPI daemon in the busybox guest: virsh shutdown is ignored, so the driver destroys it after the grace period.
  await ops.stop(NAME, 1500);
  expect(Date.now() - t0).toBeGreaterThanOrEqual(1500);
  expect(await ops.status(NAME)).toMatchObject({ state: "stopped", detail: "shut off" });

  await ops.destroy(NAME);
  expect(await ops.status(NAME)).toMatchObject({ state: "absent" });
  expect(await listDomains()).not.toContain(DOMAIN);
});

test("libvirt driver refuses a domain XML that names another VM, before defining anything", async () => {
  const o = await libvirtDriver.open({ stateDir: path.join(tmp, "state-2"), resolveImage: (id, f) => `/nonexistent/${id}/${f}`, domainPrefix: `vse-${KEY}-` });
  const xml = libvirtDriver.render({
    cluster: "drv-lv",
    clusterKey: KEY,
    vm: vmModel("vse-drv-other", "libvirt"),
    image: imageRef("0".repeat(64)),
    accel: "tcg",
    kernelArgs: [],
  });
  await expect(o.create({ name: NAME, config: xml })).rejects.toThrow(domainName(KEY, "vse-drv-other"));
  expect(await listDomains()).not.toContain(domainName(KEY, "vse-drv-other"));
});
