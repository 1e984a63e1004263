// The benchmark's stand-in driver (provider/drivers/standin.ts): it runs a real process per VM that
// reports the job on the console, stops it, and a node agent uses it only when started with
// --standin-guests; without the flag "standin" is no hypervisor an agent runs.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { Agent, parseJob, readTail } from "../../provider/agent/agent";
import { ImageStore } from "../../provider/agent/image-store";
import { checkVmSpec, VmSpec } from "../../provider/agent/protocol";
import { clusterKey } from "../../provider/drivers/network";
import { ConfigRefused } from "../../provider/drivers/qemu";
import { STANDIN_OUTPUT, standinDriver } from "../../provider/drivers/standin";
import { imageRef, markersFor } from "../../provider/image/busybox";
import type { VmModel } from "../../provider/model/resolve";
import { PERMISSIVE_SITE_POLICY } from "../../provider/model/site-policy";
import { renderVmConfig } from "../../provider/render/render";

const IMAGE = "ab".repeat(32);
const KEY = clusterKey("test", "standin", "c");

function vmConfig(name: string): string {
  const vm: VmModel = {
    name,
    index: 0,
    host: 0,
    profile: { name: "p", hypervisor: "qemu", memoryMiB: 64, vcpus: 1, machine: "pc", accel: "tcg" },
  };
  return renderVmConfig({ cluster: "c", clusterKey: KEY, vm, image: imageRef(IMAGE), accel: "tcg", kernelArgs: [] });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !fs.readFileSync(`/proc/${pid}/stat`, "utf8").includes(") Z ");
  } catch {
    return false;
  }
}

async function until<T>(what: string, fn: () => T | undefined | Promise<T | undefined>, ms = 10000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

let dir: string;
let store: ImageStore;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-standin-"));
  // A fake image: the agent admits by the store's files and metadata, and a stand-in boots nothing.
  const img = path.join(dir, "images", IMAGE);
  fs.mkdirSync(img, { recursive: true });
  for (const f of ["vmlinuz", "initrd.img"]) fs.writeFileSync(path.join(img, f), "not a kernel");
  fs.writeFileSync(path.join(img, "image.json"), JSON.stringify({ environment: { base: "busybox" } }));
  store = new ImageStore(path.join(dir, "images"));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

test("the stand-in runs a process per VM that reports the job, and stops it", async () => {
  const ops = await standinDriver.open({ stateDir: path.join(dir, "vms"), resolveImage: (id, f) => store.resolve(id, f) });
  await ops.create({ name: "c-0", config: vmConfig("c-0") });
  const run = await ops.start("c-0");
  expect(alive(run.pid)).toBe(true);
  const job = await until("the job result", () => {
    const j = parseJob(readTail(path.join(dir, "vms", "c-0", "console.log")), markersFor(IMAGE));
    return j.state === "done" ? j : undefined;
  });
  expect(job).toEqual({ state: "done", exitCode: 0, output: STANDIN_OUTPUT });
  expect((await ops.status("c-0")).state).toBe("running");
  expect((await ops.recover("c-0"))?.pid).toBe(run.pid);
  // Started again while it runs: the running process is the VM, no second one.
  expect((await ops.start("c-0")).pid).toBe(run.pid);
  await ops.stop("c-0", 1000);
  expect(await run.exited).toEqual({ code: null, signal: "SIGTERM" });
  expect(alive(run.pid)).toBe(false);
  expect((await ops.status("c-0")).state).toBe("stopped");
  await ops.destroy("c-0");
  expect((await ops.status("c-0")).state).toBe("absent");
});

test("a started stand-in is running from the moment start returns (its shell's exec of sleep is no gap)", async () => {
  // Found at 1,000 VMs: a status taken while the shell exec'd sleep saw no process, and the agent
  // tried to resume the "stopped" VM. Many starts, each looked at at once and again and again.
  const ops = await standinDriver.open({ stateDir: path.join(dir, "vms"), resolveImage: (id, f) => store.resolve(id, f) });
  const seen: string[] = [];
  for (let i = 0; i < 30; i++) {
    const name = `c-${i}`;
    await ops.create({ name, config: vmConfig(name) });
    await ops.start(name);
    for (let k = 0; k < 20; k++) seen.push((await ops.status(name)).state);
  }
  expect(seen.filter((s) => s !== "running")).toEqual([]);
  for (let i = 0; i < 30; i++) await ops.destroy(`c-${i}`);
});

test("the stand-in runs only what the QEMU allowlist admits", async () => {
  const ops = await standinDriver.open({ stateDir: path.join(dir, "vms") });
  await expect(ops.create({ name: "c-0", config: vmConfig("c-0") + "-device pci-testdev\n" })).rejects.toThrow(ConfigRefused);
  await expect(ops.create({ name: "c-1", config: vmConfig("c-0") })).rejects.toThrow(/names "c-0"/);
});

test("an agent runs QEMU VMs as stand-ins only with --standin-guests, and never a hypervisor named standin", async () => {
  const spec = (hypervisor: string): VmSpec => ({ hypervisor, config: vmConfig("c-0"), markers: markersFor(IMAGE), stopGraceSeconds: 1 });
  // Over the API: "standin" is no hypervisor an agent runs.
  expect(checkVmSpec(spec("standin"))).toMatch(/^hypervisor: expected one of "qemu", "libvirt"/);

  const plain = new Agent({ stateDir: path.join(dir, "plain"), clusterKey: KEY, images: store, policy: () => PERMISSIVE_SITE_POLICY });
  await plain.load();
  try {
    await expect(plain.put("c-0", spec("standin"))).rejects.toMatchObject({
      message: expect.stringMatching(/a node agent runs "qemu" or "libvirt", found "standin"/),
    });
    // Nothing ran (the agent keeps a stopped entry it cannot remove through a driver it cannot open).
    const left = await plain.get("c-0");
    expect(left === undefined || (left.observed.state === "stopped" && left.observed.pid === undefined && left.observed.starts === 0)).toBe(true);
  } finally {
    plain.close();
  }

  const bench = new Agent({ stateDir: path.join(dir, "bench"), clusterKey: KEY, images: store, policy: () => PERMISSIVE_SITE_POLICY, standinGuests: true });
  await bench.load();
  try {
    // Even so the name "standin" is refused: the flag swaps what runs a qemu VM, it adds no hypervisor.
    await expect(bench.put("c-1", { ...spec("standin"), config: vmConfig("c-1") })).rejects.toThrow(/found "standin"/);
    const v = await bench.put("c-0", spec("qemu"));
    expect(v.observed.state).toBe("running");
    const done = await until("the job via the agent", async () => ((await bench.get("c-0"))?.job.state === "done" ? bench.get("c-0") : undefined));
    expect(done!.job).toEqual({ state: "done", exitCode: 0, output: STANDIN_OUTPUT });
    expect(fs.readFileSync(`/proc/${v.observed.pid}/cmdline`, "utf8")).not.toMatch(/qemu/);
    expect(await bench.delete("c-0")).toBe(true);
    expect(alive(v.observed.pid!)).toBe(false);
  } finally {
    bench.close();
  }
});
