// `vse warm`: makes the warm-launch snapshots of the given definitions ahead of
// time, into the host's store, so that even the first VM of a warm environment
// restores instead of booting. It boots one throw-away VM per snapshot through
// the same QEMU driver the node agents use, which saves the snapshot at the
// guest's ready point; then the VM is destroyed.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { qemuDriver } from "../drivers/qemu-driver";
import { parseQemuConfig } from "../drivers/qemu";
import { restoreUri, snapshotKey } from "../drivers/qemu-warm";
import { buildEnvironmentImage } from "../image";
import { imageResolver } from "../image/busybox";
import { planClusters, PlanOptions } from "../program/plan";

export interface WarmResult {
  cluster: string;
  key: string;
  /** "made", or "present" when the store already had it. */
  state: "made" | "present";
  seconds: number;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Boots one throw-away VM of a warm image's config through the QEMU driver (images from cacheDir) until
 * the driver has saved its snapshot into <cacheDir>/snapshots; returns the snapshot's key.
 */
export async function makeSnapshot(
  cacheDir: string,
  name: string,
  config: string,
  job: { command: string[]; env: Record<string, string> },
  timeoutMs = 300000,
  what = `VM ${name}`,
): Promise<string> {
  const snapshotDir = path.join(cacheDir, "snapshots");
  const { facts } = parseQemuConfig(config);
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-warm-"));
  const ops = await qemuDriver.open({ stateDir, resolveImage: imageResolver(cacheDir), snapshotDir });
  try {
    await ops.create({ name, config, job });
    await ops.start(name);
    const end = Date.now() + timeoutMs;
    while (!restoreUri(snapshotDir, facts)) {
      if (Date.now() > end) throw new Error(`${what}: no snapshot within ${timeoutMs / 1000} s (console: ${path.join(stateDir, name, "console.log")})`);
      // Paused while it is being saved; only a VM that is gone has failed.
      const st = (await ops.status(name).catch(() => ({ state: "running" }))).state;
      if (st === "stopped" || st === "absent") throw new Error(`${what}: the VM ended before its snapshot was saved`);
      await sleep(100);
    }
    return snapshotKey(facts);
  } finally {
    await ops.destroy(name);
    fs.rmSync(stateDir, { recursive: true, force: true });
  }
}

export async function warmSnapshots(paths: string[], cacheDir: string, options: PlanOptions, timeoutMs = 300000): Promise<WarmResult[]> {
  const snapshotDir = path.join(cacheDir, "snapshots");
  const results: WarmResult[] = [];
  for (const plan of await planClusters(paths, cacheDir, options)) {
    if (!plan.model.environment.warm) continue;
    const first = plan.vms[0];
    const { facts } = parseQemuConfig(first.config);
    const key = snapshotKey(facts);
    const t0 = Date.now();
    if (restoreUri(snapshotDir, facts)) {
      results.push({ cluster: plan.model.name, key, state: "present", seconds: 0 });
      continue;
    }
    await buildEnvironmentImage(plan.model.environment, cacheDir, undefined, plan.extras);
    const { command, env } = plan.model.environment.job;
    await makeSnapshot(cacheDir, first.vm.name, first.config, { command, env }, timeoutMs, `cluster ${plan.model.name}`);
    results.push({ cluster: plan.model.name, key, state: "made", seconds: (Date.now() - t0) / 1000 });
  }
  return results;
}
