import * as fs from "fs";
import * as path from "path";
import { CAPABILITY_NAMES, HypervisorUnavailableError, probe } from "../../provider/drivers/driver";
import { capabilityMatrix, DRIVERS, driverFor, HYPERVISORS } from "../../provider/drivers/registry";
import { TEMPLATE_FILES, TEMPLATE_ROOT } from "../../provider/render/render";
import { regenerateAllowed } from "../support/regenerate";

const DOC = path.resolve(__dirname, "..", "..", "docs", "capabilities.md");
const schema = JSON.parse(fs.readFileSync(path.resolve(__dirname, "..", "..", "schema", "vmprofile.schema.json"), "utf8"));

test("docs/capabilities.md is generated from the drivers and up to date (UPDATE_DOCS=1 rewrites it, outside CI)", () => {
  const text = capabilityMatrix();
  if (regenerateAllowed("UPDATE_DOCS")) fs.writeFileSync(DOC, text);
  expect(fs.readFileSync(DOC, "utf8")).toBe(text);
});

test("one driver per hypervisor of the schema, each with its own template on disk", () => {
  expect([...HYPERVISORS].sort()).toEqual([...schema.properties.spec.properties.hypervisor.enum].sort());
  for (const h of HYPERVISORS) {
    const d = driverFor(h);
    expect(d.name).toBe(h);
    expect(d.template).toBe(TEMPLATE_FILES[h]);
    expect(d.template.startsWith(`${h}/`)).toBe(true);
    expect(fs.existsSync(path.join(TEMPLATE_ROOT, d.template))).toBe(true);
    expect(Object.keys(d.capabilities).sort()).toEqual([...CAPABILITY_NAMES].sort());
  }
  expect(() => driverFor("hyperv" as never)).toThrow('unknown hypervisor "hyperv"; known: qemu, libvirt, xen, virtualbox, palacios');
});

test("the matrix shows every capability of every driver", () => {
  const rows = capabilityMatrix().split("\n");
  const header = rows.find((r) => r.startsWith("| Capability"))!;
  expect(header).toBe("| Capability | `qemu` | `libvirt` | `xen` | `virtualbox` | `palacios` |");
  const migrate = rows.find((r) => r.startsWith("| Live migration"))!;
  expect(migrate).toBe(`| Live migration | ${HYPERVISORS.map((h) => (DRIVERS[h].capabilities.migrate ? "yes" : "no")).join(" | ")} |`);
});

// This machine is no Xen dom0, has no VirtualBox and no Palacios module: opening those drivers must say so, naming what it looked for.
test.each([
  ["xen", /xl not found on PATH; install xen-utils.*not a Xen dom0/],
  ["virtualbox", /VBoxManage not found on PATH.*\/dev\/vboxdrv is missing/],
  ["palacios", /\/dev\/v3vee is missing.*v3_create not found on PATH/],
] as const)("opening %s here fails before anything starts, saying what was probed and what is missing", async (h, missing) => {
  const result = await probe(h, DRIVERS[h].requirements);
  expect(result.available).toBe(false);
  expect(result.checked).toEqual(DRIVERS[h].requirements.map((r) => r.what));
  const err = await DRIVERS[h].open({ stateDir: "/nonexistent" }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(HypervisorUnavailableError);
  expect((err as Error).message).toMatch(new RegExp(`^${h}: not available on this host; checked `));
  expect((err as Error).message).toMatch(missing);
});

test("a probe reports a binary missing from PATH with the package that provides it", async () => {
  const saved = process.env.PATH;
  process.env.PATH = "/nonexistent";
  try {
    const result = await probe("libvirt", DRIVERS.libvirt.requirements);
    expect(result.available).toBe(false);
    expect(result.missing).toContain("virsh not found on PATH; install libvirt-clients");
    expect(result.missing).toContain("qemu-system-x86_64 not found on PATH; install qemu-system-x86");
  } finally {
    process.env.PATH = saved;
  }
});
