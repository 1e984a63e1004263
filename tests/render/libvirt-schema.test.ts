import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { onPath } from "../../provider/drivers/driver";
import { resolveLibvirtDomain } from "../../provider/drivers/libvirt";
import { renderVmConfig } from "../../provider/render/render";
import { renderCases } from "./cases";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "vse-virt-xml-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Validates a domain XML against libvirt's own RNG schema (libvirt-clients + libxml2-utils). */
async function virtXmlValidate(name: string, xml: string): Promise<{ ok: boolean; output: string }> {
  if (!onPath("virt-xml-validate") || !onPath("xmllint")) {
    throw new Error("virt-xml-validate or xmllint not found on PATH: install the Debian packages libvirt-clients and libxml2-utils");
  }
  const execa = require("execa") as typeof import("execa");
  const file = path.join(tmp, `${name}.xml`);
  fs.writeFileSync(file, xml);
  const res = await execa("virt-xml-validate", [file, "domain"], { reject: false, all: true });
  return { ok: res.exitCode === 0, output: res.all ?? "" };
}

/** What the node agent defines from a render: image references and agent:console resolved to real files. */
function defined(xml: string): string {
  return resolveLibvirtDomain(xml, {
    resolveImage: (id, file) => `/var/lib/vse-provider/images/${id}/${file}`,
    consolePath: "/var/lib/vse-provider/vms/md-sim-0/console.log",
  });
}

test.each(renderCases("libvirt").map((c) => [c.name, c] as const))(
  "the domain XML the agent defines from render %s validates against libvirt's schema",
  async (name, c) => {
    const res = await virtXmlValidate(name, defined(renderVmConfig(c.input)));
    expect(res.output).toMatch(/validates$/m);
    expect(res.ok).toBe(true);
  },
);

test("libvirt's schema rejects a domain the template must not produce", async () => {
  const xml = defined(renderVmConfig(renderCases("libvirt")[0].input)).replace("<memory unit='MiB'>", "<memory unit='pages'>");
  const res = await virtXmlValidate("broken", xml);
  expect(res.ok).toBe(false);
  expect(res.output).toMatch(/fails to validate/);
});
