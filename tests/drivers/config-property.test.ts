// Property tests of the node agent's allowlists: every render of the real
// templates parses back to the facts it was rendered from, and whatever is
// added to a valid config is either refused with ConfigRefused or changes
// nothing the agent runs.
import fc from "fast-check";
import { parseLibvirtDomain, resolveLibvirtDomain } from "../../provider/drivers/libvirt";
import { clusterKey, clusterNetwork, domainName, nicsFor } from "../../provider/drivers/network";
import { ConfigFacts, ConfigRefused, parseQemuConfig } from "../../provider/drivers/qemu";
import { imageRef } from "../../provider/image/busybox";
import type { ProfileModel } from "../../provider/model/resolve";
import { kernelCommandLine, RenderInput, renderVmConfig } from "../../provider/render/render";
import { renderCases } from "../render/cases";

const SETTINGS = { numRuns: 300, seed: 20240611 };

const label = (max: number) => fc.stringMatching(new RegExp(`^[a-z]([a-z0-9-]{0,${max - 2}}[a-z0-9])?$`));
const kernelArg = fc.stringMatching(/^[A-Za-z0-9_.,:/=+-]{1,128}$/);

const renderInput = fc.record({
  project: fc.string({ maxLength: 20 }),
  stack: fc.string({ maxLength: 20 }),
  cluster: label(40),
  vmName: label(80),
  index: fc.integer({ min: 0, max: 0xffff }),
  machine: fc.constantFrom<ProfileModel["machine"]>("pc", "q35", "microvm"),
  accel: fc.constantFrom<"tcg" | "kvm">("tcg", "kvm"),
  memoryMiB: fc.integer({ min: 16, max: 1048576 }),
  vcpus: fc.integer({ min: 1, max: 1024 }),
  imageId: fc.stringMatching(/^[0-9a-f]{64}$/),
  kernelArgs: fc.array(kernelArg, { maxLength: 24 }),
  network: fc.boolean(),
});

type Generated = typeof renderInput extends fc.Arbitrary<infer T> ? T : never;

function toInput(g: Generated, hypervisor: "qemu" | "libvirt"): { input: RenderInput; facts: ConfigFacts } {
  const key = clusterKey(g.project, g.stack, g.cluster);
  const network = g.network ? clusterNetwork(key) : undefined;
  const input: RenderInput = {
    cluster: g.cluster,
    clusterKey: key,
    vm: {
      name: g.vmName,
      index: g.index,
      host: 0,
      profile: { name: "p", hypervisor, memoryMiB: g.memoryMiB, vcpus: g.vcpus, machine: g.machine, accel: g.accel },
    },
    image: imageRef(g.imageId),
    accel: g.accel,
    kernelArgs: g.kernelArgs,
    network,
  };
  const facts: ConfigFacts = {
    name: hypervisor === "libvirt" ? domainName(key, g.vmName) : g.vmName,
    machine: g.machine,
    accel: g.accel,
    memoryMiB: g.memoryMiB,
    vcpus: g.vcpus,
    imageId: g.imageId,
    kernelArgs: kernelCommandLine(g.kernelArgs),
    nics: network ? nicsFor(key, g.index).map((n) => ({ mac: n.mac, mcast: network.mcast })) : [],
  };
  return { input, facts };
}

test("(a) QEMU: every render of the template parses back to the facts it was rendered from", () => {
  fc.assert(
    fc.property(renderInput, (g) => {
      const { input, facts } = toInput(g, "qemu");
      expect(parseQemuConfig(renderVmConfig(input)).facts).toEqual(facts);
    }),
    SETTINGS,
  );
});

test("(a) libvirt: every render of the template parses back to the facts it was rendered from", () => {
  fc.assert(
    fc.property(renderInput, (g) => {
      const { input, facts } = toInput(g, "libvirt");
      const xml = renderVmConfig(input);
      expect(parseLibvirtDomain(xml).facts).toEqual(facts);
      // What the agent defines from it keeps every fact but the image references.
      expect(resolveLibvirtDomain(xml, { resolveImage: (id, f) => `/store/${id}/${f}`, consolePath: "/c/console.log" })).toContain(
        `<vcpu placement='static'>${g.vcpus}</vcpu>`,
      );
    }),
    SETTINGS,
  );
});

/** Parses; returns the result, or "refused" for a ConfigRefused. Any other exception propagates and fails the property. */
function attempt<T>(parse: () => T): T | "refused" {
  try {
    return parse();
  } catch (err) {
    if (err instanceof ConfigRefused) {
      if (!/^config line [1-9][0-9]*: ./.test(err.message) || !(err.line >= 1)) throw new Error(`badly located refusal: ${err.message}`);
      return "refused";
    }
    throw err;
  }
}

const QEMU_HOSTILE = [
  "-vnc 0.0.0.0:0",
  "-drive file=/etc/shadow,format=raw",
  "-qmp-pretty tcp:0.0.0.0:4444,server=on,wait=off",
  "-netdev user,id=n,hostfwd=tcp::2222-:22",
  "-netdev socket,id=vse1,mcast=239.255.1.1:5000,localaddr=127.0.0.1",
  "-device virtio-net-pci,netdev=vse1,mac=02:00:00:00:00:09",
  "-chardev socket,id=c,host=0.0.0.0,port=1,server=on",
  "-gdb tcp::1234",
  "-s",
  "-S",
  "-plugin /tmp/x.so",
  "-readconfig /etc/x",
  "-kernel /etc/passwd",
  "-kernel image:../../x/vmlinuz",
  "-m 512M",
  "-m 9999999M",
  "-smp 0",
  "-no-reboot",
  "-nodefaults",
  "-display none",
  "-display gtk",
  "-append x",
  "-name other",
  "-accel kvm",
  "-machine q35",
  "-incoming defer",
  "#",
  "",
  "   ",
];
const byteString = fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b).toString("latin1"));
const anyText = fc.oneof(fc.string({ unit: "binary", maxLength: 40 }), byteString, fc.string({ maxLength: 40 }));
const qemuLine = fc.oneof(
  fc.constantFrom(...QEMU_HOSTILE),
  fc.tuple(fc.stringMatching(/^-[a-z][a-z-]{0,14}$/), fc.string({ maxLength: 30 })).map(([o, v]) => `${o} ${v}`),
  anyText.map((s) => `# ${s}`),
  anyText,
);

const BASES = renderCases("qemu").map((c) => renderVmConfig(c.input));
const XML_BASES = renderCases("libvirt").map((c) => renderVmConfig(c.input));

test("(b) QEMU: a line added anywhere is refused (ConfigRefused) or changes nothing the agent runs", () => {
  fc.assert(
    fc.property(fc.constantFrom(...BASES), qemuLine, fc.nat(), (base, line, at) => {
      const lines = base.split("\n");
      lines.splice(at % (lines.length + 1), 0, line);
      const original = parseQemuConfig(base);
      const got = attempt(() => parseQemuConfig(lines.join("\n")));
      if (got !== "refused") {
        expect(got.args).toEqual(original.args);
        expect(got.facts).toEqual(original.facts);
      }
    }),
    { ...SETTINGS, numRuns: 500 },
  );
});

test("(b) QEMU: characters inserted anywhere are refused or leave the same options (only a value may change)", () => {
  fc.assert(
    fc.property(fc.constantFrom(...BASES), anyText, fc.nat(), (base, text, at) => {
      const i = at % (base.length + 1);
      const original = parseQemuConfig(base).args;
      const got = attempt(() => parseQemuConfig(base.slice(0, i) + text + base.slice(i)));
      if (got !== "refused") {
        expect(got.args.length).toBe(original.length);
        const options = (args: string[]) =>
          args.filter(
            (a) =>
              a.startsWith("-") &&
              [
                "-name",
                "-machine",
                "-accel",
                "-m",
                "-smp",
                "-kernel",
                "-initrd",
                "-append",
                "-netdev",
                "-device",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "-no-reboot",
              ].includes(a),
          );
        expect(options(got.args)).toEqual(options(original));
      }
    }),
    { ...SETTINGS, numRuns: 500 },
  );
});

const XML_HOSTILE = [
  "<graphics type='vnc' port='5900'/>",
  "<disk type='file'><source file='/etc/shadow'/></disk>",
  "<qemu:commandline><qemu:arg value='-s'/></qemu:commandline>",
  "<serial type='file'><source path='agent:console' append='off'/><target port='1'/></serial>",
  "<interface type='user'/>",
  "<console type='tcp'/>",
  "<memballoon model='none'/>",
  "<emulator>/usr/bin/qemu-system-x86_64</emulator>",
  "<name>vse-0123456789-x</name>",
  "<!DOCTYPE x>",
  "<!ENTITY x 'y'>",
  "<?xml version='1.0'?>",
  "<![CDATA[x]]>",
  "&xxe;",
  "</devices>",
  "</os><os>",
  "<!-- a comment -->",
  "",
  "  ",
];
const xmlLine = fc.oneof(
  fc.constantFrom(...XML_HOSTILE),
  anyText.map((s) => `<!-- ${s.replace(/-/g, "")} -->`),
  anyText,
);
const resolved = (xml: string) => resolveLibvirtDomain(xml, { resolveImage: (id, f) => `/store/${id}/${f}`, consolePath: "/c/console.log" });

test("(b) libvirt: a line added anywhere is refused (ConfigRefused) or changes nothing libvirt is given", () => {
  fc.assert(
    fc.property(fc.constantFrom(...XML_BASES), xmlLine, fc.nat(), (base, line, at) => {
      const lines = base.split("\n");
      lines.splice(at % (lines.length + 1), 0, line);
      const xml = lines.join("\n");
      const got = attempt(() => parseLibvirtDomain(xml));
      if (got !== "refused") {
        expect(got.facts).toEqual(parseLibvirtDomain(base).facts);
        expect(resolved(xml)).toBe(resolved(base));
      }
    }),
    { ...SETTINGS, numRuns: 500 },
  );
});

test("(b) libvirt: characters inserted anywhere are refused or leave the same elements and attributes", () => {
  const shape = (xml: string) => (xml.match(/<\/?[A-Za-z_:][^\s/>]*|\s[A-Za-z_:][\w.:-]*=/g) ?? []).join(" ");
  fc.assert(
    fc.property(fc.constantFrom(...XML_BASES), anyText, fc.nat(), (base, text, at) => {
      const i = at % (base.length + 1);
      const xml = base.slice(0, i) + text + base.slice(i);
      const got = attempt(() => parseLibvirtDomain(xml));
      if (got !== "refused") expect(shape(resolved(xml))).toBe(shape(resolved(base)));
    }),
    { ...SETTINGS, numRuns: 500 },
  );
});
