import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { DriverOps } from "../../provider/drivers/driver";
import { clusterKey, clusterNetwork, nicsFor } from "../../provider/drivers/network";
import { ConfigRefused, parseQemuConfig, vmPaths } from "../../provider/drivers/qemu";
import { qemuDriver } from "../../provider/drivers/qemu-driver";
import { buildImage, imageId, ImageExtras, imageRef, imageResolver, markersFor } from "../../provider/image/busybox";
import type { ImageRef } from "../../provider/render/render";
import { environment, freePort, vmModel, waitJob } from "./helpers";

const CLUSTER = "vse-net";
const KEY = clusterKey("vse", "test", CLUSTER);
const NAMES = [`${CLUSTER}-0`, `${CLUSTER}-1`];
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "vse-guest-net-"));
let ops: DriverOps | undefined;

afterAll(async () => {
  // Both guests are stopped whatever the test did.
  if (ops) for (const n of NAMES) await ops.destroy(n).catch(() => undefined);
  fs.rmSync(tmp, { recursive: true, force: true });
});

// Each guest pings the address its kernel command line names as its peer, retrying while the other boots.
const JOB = [
  "/bin/sh",
  "-c",
  [
    "peer=$(sed -n 's/.*vse[.]peer=\\([^ ]*\\).*/\\1/p' /proc/cmdline)",
    "ip route get 192.0.2.1 >/dev/null 2>&1 && echo 'route outside the cluster' || echo 'no route outside the cluster'",
    "i=0",
    'while [ $i -lt 90 ]; do if ping -c 1 -W 1 "$peer" >/dev/null 2>&1; then echo "reached $peer"; exit 0; fi; i=$((i+1)); done',
    'echo "cannot reach $peer"; ip addr; exit 1',
  ].join("\n"),
];

const extras: ImageExtras = { modules: ["virtio_net", "virtio_pci"], network: true };
const ips = [0, 1].map((i) => nicsFor(KEY, i)[0].ipv4);

/** Boots both guests with the configs given, waits for both jobs, checks each reached the other and saw no route out. */
async function bootPairAndPing(stateDir: string, configFor: (i: number, image: ImageRef) => string): Promise<void> {
  const img = buildImage(environment("net-ping", JOB), path.join(tmp, "cache"), undefined, extras);
  const o = (ops = await qemuDriver.open({ stateDir, resolveImage: imageResolver(path.join(tmp, "cache")) }));
  try {
    for (const i of [0, 1]) {
      // Started one after the other: the first guest's listening socket must exist before the second connects.
      await o.create({ name: NAMES[i], config: configFor(i, imageRef(img.id)) });
      await o.start(NAMES[i]);
    }
    const jobs = await Promise.all(NAMES.map((n) => waitJob(vmPaths(path.join(stateDir, n)).console, markersFor(img.id), 180000)));
    jobs.forEach((job, i) => {
      expect(job.output).toBe(`no route outside the cluster\nreached ${ips[1 - i]}\n`);
      expect(job.exitCode).toBe(0);
    });
  } finally {
    for (const n of NAMES) await o.destroy(n);
  }
}

function render(i: number, image: ImageRef, network?: ReturnType<typeof clusterNetwork>): string {
  return qemuDriver.render({
    cluster: CLUSTER,
    clusterKey: KEY,
    vm: vmModel(NAMES[i], "qemu", i),
    image,
    accel: "tcg",
    kernelArgs: [`vse.ip=${ips[i]}/16`, `vse.peer=${ips[1 - i]}`],
    network,
  });
}

test("the network extras give a new image id; without them the id stays the one existing definitions have", () => {
  const env = environment("net-ping", JOB);
  expect(imageId(env, undefined, extras)).not.toBe(imageId(env));
  expect(imageId(env, undefined, undefined)).toBe(imageId(env));
});

test("two QEMU guests on the rendered cluster network (socket backend, multicast) reach each other, and nothing else", async () => {
  const network = clusterNetwork(KEY);
  await bootPairAndPing(path.join(tmp, "mcast"), (i, image) => {
    const config = render(i, image, network);
    expect(config).toContain(`-device virtio-net-pci,netdev=vse0,mac=${nicsFor(KEY, i)[0].mac}`);
    return config;
  });
});

test("a point-to-point socket backend (listen/connect) is refused: a config may not open a listener or reach a port", async () => {
  const port = await freePort();
  for (const i of [0, 1]) {
    const config = [
      render(i, imageRef("0".repeat(64))).trimEnd(),
      `-netdev socket,id=vse0,${i === 0 ? "listen" : "connect"}=127.0.0.1:${port}`,
      `-device virtio-net-pci,netdev=vse0,mac=${nicsFor(KEY, i)[0].mac}`,
      "",
    ].join("\n");
    expect(() => parseQemuConfig(config)).toThrow(ConfigRefused);
    expect(() => parseQemuConfig(config)).toThrow(/-netdev expects socket,id=vse<N>,mcast=239\.255\./);
  }
});
