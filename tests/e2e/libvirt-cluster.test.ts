// `pulumi up` of a cluster whose profile says `hypervisor: libvirt`: the node
// agent defines and starts a real libvirt domain (type qemu) that boots the
// VSE image and runs the job; `destroy` leaves no domain defined.
import * as crypto from "crypto";
import * as fs from "fs";
import { listDomains, virsh } from "../../provider/drivers/libvirt";
import { clusterKey, domainName } from "../../provider/drivers/network";
import { libvirtdForTest } from "../support/libvirtd";
import { createTestStack, exampleDefinitions, processesUnder, TestStack, upAndCheckNoDiff } from "../support/stack";

jest.setTimeout(10 * 60 * 1000);

// libvirt domain names are global to libvirtd: a unique cluster name keeps runs apart.
const CLUSTER = `lv-${crypto.randomBytes(3).toString("hex")}`;
const VMS = [`${CLUSTER}-0`, `${CLUSTER}-1`];
let t: TestStack;
/** The libvirt domain of a VM: its name behind the cluster's key (project "vse", the test stack's name). */
const domain = (vm: string) => domainName(clusterKey("vse", t.name, CLUSTER), vm);
let stopDaemons: (() => Promise<void>) | undefined;

beforeAll(async () => {
  stopDaemons = await libvirtdForTest();
  const defs = exampleDefinitions()
    .replace("hypervisor: qemu", "hypervisor: libvirt")
    .replace(/name: local-cluster/g, `name: ${CLUSTER}`);
  t = await createTestStack({ "cluster.yaml": defs });
});

afterAll(async () => {
  if (t) await t.cleanup();
  if (stopDaemons) await stopDaemons();
});

test("up boots each VM as a libvirt domain and reads its job's result", async () => {
  const res = await upAndCheckNoDiff(t.stack);
  const vms = res.outputs.vms.value as Record<string, { status: string; output: string; pid: number }>;
  for (const vm of VMS) {
    expect(vms[vm]).toEqual(expect.objectContaining({ status: "running", output: "5\n" }));
    expect((await virsh(["domstate", domain(vm)])).trim()).toBe("running");
    // The domain's QEMU is libvirt's, not the agent's: "-name guest=<domain>,…".
    expect(fs.readFileSync(`/proc/${vms[vm].pid}/cmdline`, "utf8")).toContain(`guest=${domain(vm)},`);
    const xml = await virsh(["dumpxml", domain(vm)]);
    expect(xml).toContain("<type arch='x86_64' machine='pc-i440fx");
    expect(xml).toContain("<memory unit='KiB'>262144</memory>");
  }
});

test("preview after up reports no changes", async () => {
  const res = await t.stack.preview();
  expect(Object.keys(res.changeSummary ?? {})).toEqual(["same"]);
});

test("destroy leaves no libvirt domain and no process", async () => {
  await t.stack.destroy();
  const domains = await listDomains();
  for (const vm of VMS) expect(domains).not.toContain(domain(vm));
  expect(domains.filter((d) => d.startsWith(domainName(clusterKey("vse", t.name, CLUSTER), "")))).toEqual([]);
  expect(processesUnder(t.stateRoot)).toEqual([]);
  const qemus = fs
    .readdirSync("/proc")
    .filter((p: string) => /^\d+$/.test(p))
    .filter((p: string) => {
      try {
        return fs.readFileSync(`/proc/${p}/cmdline`, "utf8").includes(`guest=${domainName(clusterKey("vse", t.name, CLUSTER), "")}`);
      } catch {
        return false;
      }
    });
  expect(qemus).toEqual([]);
});
