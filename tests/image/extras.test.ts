import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as zlib from "zlib";
import { buildImage, hostKernel, imageId, initScript, markersFor, moduleLoadOrder } from "../../provider/image/busybox";
import type { EnvironmentModel } from "../../provider/model/resolve";

const env: EnvironmentModel = { name: "x", base: "busybox", kernelArgs: [], job: { command: ["true"], env: {}, afterJob: "stay-up", timeoutSeconds: 5 } };
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "vse-extras-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

test("modules come with their dependencies, deepest first, each once (from modules.dep)", () => {
  const root = path.join(tmp, "modules");
  fs.mkdirSync(path.join(root, "9.9"), { recursive: true });
  fs.writeFileSync(
    path.join(root, "9.9", "modules.dep"),
    ["kernel/a.ko: kernel/b.ko kernel/c.ko", "kernel/b.ko: kernel/c.ko", "kernel/c.ko:", "kernel/d-e.ko: kernel/c.ko", "kernel/z.ko.xz:", ""].join("\n"),
  );
  expect(moduleLoadOrder(["a"], "9.9", root)).toEqual(["kernel/c.ko", "kernel/b.ko", "kernel/a.ko"]);
  expect(moduleLoadOrder(["d_e", "a"], "9.9", root)).toEqual(["kernel/c.ko", "kernel/d-e.ko", "kernel/b.ko", "kernel/a.ko"]);
  expect(() => moduleLoadOrder(["nope"], "9.9", root)).toThrow("kernel 9.9 has no module nope");
  expect(() => moduleLoadOrder(["z"], "9.9", root)).toThrow("is compressed");
  expect(() => moduleLoadOrder(["a"], "0.0", root)).toThrow("modules.dep not found");
});

test("virtio_net on this host's kernel: the virtio core before the NIC driver", () => {
  const order = moduleLoadOrder(["virtio_net"], hostKernel().release).map((f) => path.basename(f));
  expect(order[order.length - 1]).toBe("virtio_net.ko");
  expect(order.indexOf("virtio_ring.ko")).toBeLessThan(order.indexOf("virtio.ko"));
  expect(order.indexOf("failover.ko")).toBeLessThan(order.indexOf("net_failover.ko"));
});

test("without extras, the image id and init are what they were; with extras they differ", () => {
  const markers = markersFor("a".repeat(64));
  expect(imageId(env, undefined, undefined)).toBe(imageId(env));
  expect(initScript(env, markers, undefined)).toBe(initScript(env, markers));
  expect(initScript(env, markers)).not.toContain("insmod");
  expect(imageId(env, undefined, { modules: ["virtio_net"] })).not.toBe(imageId(env));
  expect(imageId(env, undefined, { modules: ["virtio_net"], network: true })).not.toBe(imageId(env, undefined, { modules: ["virtio_net"] }));
  const script = initScript(env, markers, { network: true }, ["kernel/drivers/virtio/virtio.ko"]);
  expect(script).toContain("/bin/busybox insmod /lib/modules/virtio.ko\n");
  // Modules and the address come before the job starts.
  expect(script.indexOf("ip addr add")).toBeLessThan(script.indexOf(markers.begin));
});

test("an image with modules carries the .ko files in its initramfs, and building is reproducible", () => {
  const a = buildImage(env, path.join(tmp, "c1"), undefined, { modules: ["virtio_net"] });
  const b = buildImage(env, path.join(tmp, "c2"), undefined, { modules: ["virtio_net"] });
  expect(b.id).toBe(a.id);
  const bytes = fs.readFileSync(a.initrd);
  expect(fs.readFileSync(b.initrd).equals(bytes)).toBe(true);
  const cpio = zlib.gunzipSync(bytes).toString("latin1");
  for (const f of moduleLoadOrder(["virtio_net"], hostKernel().release)) expect(cpio).toContain(`lib/modules/${path.basename(f)}`);
});
