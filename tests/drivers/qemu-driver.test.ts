import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { DriverOps } from "../../provider/drivers/driver";
import { vmPaths } from "../../provider/drivers/qemu";
import { qemuDriver } from "../../provider/drivers/qemu-driver";
import { clusterKey } from "../../provider/drivers/network";
import { buildImage, imageRef, imageResolver, markersFor } from "../../provider/image/busybox";
import { environment, lastTick, readText, sleep, vmModel, waitFor, waitJob } from "./helpers";

const NAME = "vse-drv-qemu";
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "vse-qemu-driver-"));
const ops: DriverOps[] = [];

afterAll(async () => {
  // Whatever happened above, no QEMU of this test outlives it.
  for (const o of ops) await o.destroy(NAME).catch(() => undefined);
  fs.rmSync(tmp, { recursive: true, force: true });
});

test("QEMU driver: create, start, job output, pause, resume, live migration, graceful stop, destroy", async () => {
  // The job prints its result, then leaves a ticker running so pause and migration can be seen on the console.
  const env = environment("drv-qemu", ["/bin/sh", "-c", "echo $((2+3)); (sleep 1; i=0; while :; do echo tick $i; i=$((i+1)); sleep 1; done) &"]);
  const img = buildImage(env, path.join(tmp, "cache"));
  const config = qemuDriver.render({
    cluster: "drv",
    clusterKey: clusterKey("vse", "test", "drv"),
    vm: vmModel(NAME, "qemu"),
    image: imageRef(img.id),
    accel: "tcg",
    kernelArgs: [],
  });
  // Both hosts boot the image from the same store: the config names it by content id only.
  const resolveImage = imageResolver(path.join(tmp, "cache"));

  const source = await qemuDriver.open({ stateDir: path.join(tmp, "host-a"), resolveImage });
  const target = await qemuDriver.open({ stateDir: path.join(tmp, "host-b"), resolveImage });
  ops.push(source, target);
  const consoleA = vmPaths(path.join(tmp, "host-a", NAME)).console;
  const consoleB = vmPaths(path.join(tmp, "host-b", NAME)).console;

  expect((await source.status(NAME)).state).toBe("absent");
  await source.create({ name: NAME, config });
  expect((await source.status(NAME)).state).toBe("stopped");
  await source.start(NAME);
  expect(await source.status(NAME)).toMatchObject({ state: "running", detail: "running", memoryMiB: 128, vcpus: 1 });

  const job = await waitJob(consoleA, markersFor(img.id), 90000);
  expect(job.exitCode).toBe(0);
  // The ticker may start before the end marker is written; the job's own output comes first.
  expect(job.output).toMatch(/^5\n/);
  await waitFor("ticks on the source", () => lastTick(readText(consoleA)) >= 1, 30000);

  await source.pause(NAME);
  expect((await source.status(NAME)).state).toBe("paused");
  const pausedAt = lastTick(readText(consoleA));
  await sleep(2500);
  expect(lastTick(readText(consoleA))).toBe(pausedAt);
  await source.resume(NAME);
  expect((await source.status(NAME)).state).toBe("running");
  await waitFor("ticks after resume", () => lastTick(readText(consoleA)) > pausedAt, 30000);

  // Between agents of one machine the stream goes over a unix socket; TCP (between hosts) needs TLS credentials (cross-host tests).
  const uri = `unix:${path.join(tmp, "migrate.sock")}`;
  await target.create({ name: NAME, config });
  await target.start(NAME, { incoming: uri });
  expect((await target.status(NAME)).detail).toBe("inmigrate");
  const beforeMigration = lastTick(readText(consoleA));
  await source.migrate!(NAME, uri);
  expect((await source.status(NAME)).state).toBe("stopped");
  expect((await target.status(NAME)).state).toBe("running");
  // The target's console starts empty: ticks there come from the migrated guest, continuing its count.
  const continued = await waitFor("ticks on the target", () => (lastTick(readText(consoleB)) >= 0 ? lastTick(readText(consoleB)) : undefined), 30000);
  expect(continued).toBeGreaterThan(beforeMigration);
  expect(readText(consoleB)).not.toContain(markersFor(img.id).begin);

  const t0 = Date.now();
  await target.stop(NAME, 1000);
  // The busybox guest has no ACPI daemon, so the power button is ignored and the driver forces it after the grace period.
  expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
  expect((await target.status(NAME)).state).toBe("stopped");
  await target.destroy(NAME);
  await source.destroy(NAME);
  expect((await target.status(NAME)).state).toBe("absent");
  expect((await source.status(NAME)).state).toBe("absent");
});

test("QEMU driver refuses a config that tries to set what the driver owns, before starting anything", async () => {
  const o = await qemuDriver.open({ stateDir: path.join(tmp, "host-c"), resolveImage: (id, file) => `/nonexistent/${id}/${file}` });
  const other = qemuDriver.render({
    cluster: "drv",
    clusterKey: clusterKey("vse", "test", "drv"),
    vm: vmModel("other", "qemu"),
    image: imageRef("0".repeat(64)),
    accel: "tcg",
    kernelArgs: [],
  });
  await expect(o.create({ name: "bad", config: `${other}-qmp tcp:0.0.0.0:4444\n` })).rejects.toThrow(
    "-qmp is not an option the node agent runs; the node agent sets it itself",
  );
  await expect(o.create({ name: "bad", config: other })).rejects.toThrow('qemu: config of VM bad names "other" in -name');
  expect((await o.status("bad")).state).toBe("absent");
});
