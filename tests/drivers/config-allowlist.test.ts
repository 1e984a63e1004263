// The node agent's allowlists (parseQemuConfig, parseLibvirtDomain): the
// templates' renders are accepted with the right facts; hostile configs are
// refused with a ConfigRefused that names the line and says what is allowed.
import { parseLibvirtDomain, resolveLibvirtDomain } from "../../provider/drivers/libvirt";
import { clusterKey, clusterNetwork, HOST_ADDRESS_PLACEHOLDER, nicsFor } from "../../provider/drivers/network";
import { ConfigRefused, NetworkContext, parseQemuConfig, qemuArgs, vmPaths } from "../../provider/drivers/qemu";
import { RenderInput, renderVmConfig } from "../../provider/render/render";
import { CASES_KEY, renderCases } from "../render/cases";

const ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const OTHER = "a".repeat(64);
const QEMU = renderVmConfig(renderCases("qemu")[1].input);
const LIBVIRT = renderVmConfig(renderCases("libvirt")[1].input);

/** The line (1-based) of the first occurrence of needle. */
function lineOf(text: string, needle: string): number {
  const i = text.indexOf(needle);
  if (i < 0) throw new Error(`${needle} not in the config`);
  return text.slice(0, i).split("\n").length;
}

/** The config with line inserted before -nodefaults. */
const qemuWith = (line: string) => QEMU.replace("-nodefaults\n", `${line}\n-nodefaults\n`);
/** The config with the line starting with prefix replaced. */
const qemuReplacing = (prefix: string, line: string) => {
  const lines = QEMU.split("\n");
  const i = lines.findIndex((l) => l.startsWith(prefix));
  if (i < 0) throw new Error(`no line ${prefix}`);
  lines[i] = line;
  return lines.join("\n");
};
const qemuWithout = (prefix: string) =>
  QEMU.split("\n")
    .filter((l) => !l.startsWith(prefix))
    .join("\n");

function refusal(parse: () => unknown): ConfigRefused {
  try {
    parse();
  } catch (err) {
    if (err instanceof ConfigRefused) return err;
    throw new Error(`expected ConfigRefused, got ${String(err)}`);
  }
  throw new Error("expected ConfigRefused, the config was accepted");
}

const NOT_AN_OPTION = (opt: string) =>
  new RegExp(
    `^config line \\d+: ${opt} is not an option the node agent runs(; the node agent sets it itself)? \\(it allows: -name, -machine, -accel, -m, -smp, -kernel, -initrd, -append, -netdev, -device, -nodefaults, -no-user-config, -display, -no-reboot\\)$`,
  );

describe("QEMU: the template's renders are accepted", () => {
  test.each(renderCases("qemu").map((c) => [c.name, c.input] as const))("%s", (_, input) => {
    const { facts } = parseQemuConfig(renderVmConfig(input));
    expect(facts.name).toBe(input.vm.name);
    expect(facts.imageId).toBe(ID);
    expect(facts.nics).toHaveLength(input.network ? 1 : 0);
  });
});

describe("QEMU: hostile configs are refused, naming the line, the option and what is allowed", () => {
  const nic = "-netdev socket,id=vse0,";
  test.each<[string, string, RegExp]>([
    ["a VNC listener", qemuWith("-vnc 0.0.0.0:0"), NOT_AN_OPTION("-vnc")],
    ["a host file as a drive", qemuWith("-drive file=/etc/shadow,format=raw"), NOT_AN_OPTION("-drive")],
    ["a QMP listener", qemuWith("-qmp-pretty tcp:0.0.0.0:4444,server=on,wait=off"), NOT_AN_OPTION("-qmp-pretty")],
    ["the agent's own QMP", qemuWith("-qmp tcp:0.0.0.0:4444,server=on,wait=off"), NOT_AN_OPTION("-qmp")],
    [
      "a user-net port forward",
      qemuReplacing(nic, "-netdev user,id=n,hostfwd=tcp::2222-:22"),
      /^config line \d+: -netdev expects socket,id=vse<N>,mcast=239\.255\.<0-255>\.<1-255>:<port 1024-65535>,localaddr=<the host's IPv4 address, or agent:host-address>, found "user,id=n,hostfwd=tcp::2222-:22"$/,
    ],
    ["a listening socket netdev", qemuReplacing(nic, "-netdev socket,id=vse0,listen=:1234"), /-netdev expects socket,id=vse<N>,mcast=/],
    ["a multicast group outside 239.255/16", qemuReplacing(nic, "-netdev socket,id=vse0,mcast=224.0.0.1:5000,localaddr=127.0.0.1"), /-netdev expects/],
    ["a privileged multicast port", qemuReplacing(nic, "-netdev socket,id=vse0,mcast=239.255.1.1:22,localaddr=127.0.0.1"), /-netdev expects/],
    ["a socket bound to every address", qemuReplacing(nic, "-netdev socket,id=vse0,mcast=239.255.1.1:5000,localaddr=0.0.0.0"), /-netdev expects/],
    ["a TCP chardev", qemuWith("-chardev socket,id=c0,host=0.0.0.0,port=4444,server=on,wait=off"), NOT_AN_OPTION("-chardev")],
    ["a gdb stub", qemuWith("-gdb tcp::1234"), NOT_AN_OPTION("-gdb")],
    ["the gdb shorthand", qemuWith("-s"), NOT_AN_OPTION("-s")],
    ["a TCG plugin", qemuWith("-plugin /tmp/evil.so"), NOT_AN_OPTION("-plugin")],
    ["another config file", qemuWith("-readconfig /etc/qemu/evil.cfg"), NOT_AN_OPTION("-readconfig")],
    ["a floppy from a host file", qemuWith("-fda /etc/shadow"), NOT_AN_OPTION("-fda")],
    ["a firmware from a host file", qemuWith("-bios /etc/shadow"), NOT_AN_OPTION("-bios")],
    ["a firmware directory", qemuWith("-L /etc"), NOT_AN_OPTION("-L")],
    ["a saved state", qemuWith("-loadvm snap"), NOT_AN_OPTION("-loadvm")],
    ["an object reading host memory", qemuWith("-object memory-backend-file,id=m,mem-path=/etc/shadow,size=1M"), NOT_AN_OPTION("-object")],
    ["an incoming migration listener", qemuWith("-incoming tcp:0.0.0.0:4444"), NOT_AN_OPTION("-incoming")],
    ["a SPICE listener", qemuWith("-spice port=5900,disable-ticketing=on"), NOT_AN_OPTION("-spice")],
    ["a monitor on TCP", qemuWith("-monitor tcp:0.0.0.0:4445,server=on,wait=off"), NOT_AN_OPTION("-monitor")],
    ["a serial port on UDP", qemuWith("-serial udp::4446"), NOT_AN_OPTION("-serial")],
    ["a 9p share of the host", qemuWith("-virtfs local,path=/,mount_tag=host,security_model=none"), NOT_AN_OPTION("-virtfs")],
    ["the sandbox switched off", qemuWith("-sandbox off"), NOT_AN_OPTION("-sandbox")],
    ["a CD from a host file", qemuWith("-cdrom /etc/shadow"), NOT_AN_OPTION("-cdrom")],
    [
      "another device",
      qemuWith("-device e1000,netdev=vse0"),
      /^config line \d+: -device expects virtio-net-pci,netdev=vse<N>,mac=<locally administered unicast MAC, lower case>, found "e1000,netdev=vse0"$/,
    ],
    ["a multicast MAC", qemuReplacing("-device", "-device virtio-net-pci,netdev=vse0,mac=01:00:5e:00:00:01"), /-device expects virtio-net-pci/],
    [
      "a device with extra properties",
      qemuReplacing("-device", "-device virtio-net-pci,netdev=vse0,mac=02:00:00:00:00:01,romfile=/etc/shadow"),
      /-device expects virtio-net-pci/,
    ],
    ["a netdev without its device", qemuWithout("-device"), /^config line \d+: netdev vse0 has no -device virtio-net-pci,netdev=vse0,mac=…/],
    ["a device without a netdev", qemuWithout("-netdev"), /^config line \d+: -device names netdev vse0, which no -netdev line before it defines$/],
    [
      "a kernel from a host path",
      qemuReplacing("-kernel", "-kernel /etc/passwd"),
      /^config line 9: -kernel expects image:<id>\/vmlinuz from the agent's image store \(<id>: 64 lower-case hex digits\), found "\/etc\/passwd"$/,
    ],
    [
      "a kernel reference that climbs out of the store",
      qemuReplacing("-kernel", "-kernel image:../../x/vmlinuz"),
      /-kernel expects image:<id>\/vmlinuz from the agent's image store .*, found "image:\.\.\/\.\.\/x\/vmlinuz"/,
    ],
    ["an initrd from a host path", qemuReplacing("-initrd", "-initrd /etc/shadow"), /-initrd expects image:<id>\/initrd\.img from the agent's image store/],
    [
      "kernel and initrd from different images",
      qemuReplacing("-initrd", `-initrd image:${OTHER}/initrd.img`),
      new RegExp(`-initrd names image ${OTHER} but -kernel names image ${ID}; both must come from the same image`),
    ],
    ["-m twice", qemuWith("-m 512M"), /^config line \d+: -m is given twice \(first on line 7\); each option may appear once$/],
    ["-m out of range", qemuReplacing("-m ", "-m 9999999M"), /^config line 7: -m expects <MiB>M with MiB from 16 to 1048576, found "9999999M"$/],
    ["-m in another unit", qemuReplacing("-m ", "-m 2G"), /-m expects <MiB>M/],
    ["no vCPU", qemuReplacing("-smp", "-smp 0"), /^config line 8: -smp expects a vCPU count from 1 to 1024, found "0"$/],
    ["-smp with topology", qemuReplacing("-smp", "-smp 4,maxcpus=4096"), /-smp expects a vCPU count/],
    [
      "a carriage return in a value",
      qemuReplacing("-name", "-name md-sim-3\r"),
      /^config line 4: control character U\+000D \(carriage return\) in the config; only printable characters are allowed, and newlines between lines$/,
    ],
    ["an escape in -append", qemuReplacing("-append", "-append console=ttyS0 \x1b[2J"), /^config line 11: control character U\+001B \(escape\)/],
    ["a NUL in a value", qemuReplacing("-accel", "-accel kvm\0,x"), /^config line 6: control character U\+0000 \(NUL\)/],
    ["DEL in a comment", `# \x7f\n${QEMU}`, /^config line 1: control character U\+007F \(delete\)/],
    ["a tab between option and value", qemuReplacing("-smp", "-smp\t4"), /control character U\+0009 \(tab\)/],
    ["a newline smuggled into -append", qemuReplacing("-append", "-append console=ttyS0\n-drive file=/etc/shadow"), NOT_AN_OPTION("-drive")],
    [
      "a 5 KB -append",
      qemuReplacing("-append", `-append ${"a".repeat(5000)}`),
      /^config line 11: -append expects a kernel command line of printable ASCII, at most 4096 bytes, found "a{80}…"$/,
    ],
    ["non-ASCII in -append", qemuReplacing("-append", "-append console=ttyS0 é"), /-append expects a kernel command line of printable ASCII/],
    ["a name that is a path", qemuReplacing("-name", "-name ../x"), /^config line 4: -name expects a lower-case DNS label .*, found "\.\.\/x"$/],
    ["a name with QEMU sub-options", qemuReplacing("-name", "-name vm,process=evil"), /-name expects a lower-case DNS label/],
    ["a display", qemuReplacing("-display", "-display vnc=0.0.0.0:0"), /^config line \d+: -display expects none, found "vnc=0\.0\.0\.0:0"$/],
    [
      "a machine with extra properties",
      qemuReplacing("-machine", "-machine q35,kernel-irqchip=off,dumpdtb=/etc/x"),
      /^config line 5: -machine expects one of pc, q35, microvm,pit=on,pic=on,rtc=on, found/,
    ],
    ["an unknown accelerator", qemuReplacing("-accel", "-accel hax"), /-accel expects tcg or kvm, found "hax"/],
    [
      "no -nodefaults",
      qemuWithout("-nodefaults"),
      /^config line \d+: the config has no -nodefaults line, which the node agent requires \(no default devices\)$/,
    ],
    [
      "no -no-user-config",
      qemuWithout("-no-user-config"),
      /the config has no -no-user-config line, which the node agent requires \(no other config file is read\)/,
    ],
    ["no -display none", qemuWithout("-display"), /the config has no -display line, which the node agent requires \(-display none: no display\)/],
    ["a value on a flag", qemuReplacing("-nodefaults", "-nodefaults yes"), /-nodefaults takes no value, found "yes"/],
    ["a double-dash option", qemuWith("--vnc :0"), /expected "-option value" \(one QEMU option per line\), found "--vnc :0"/],
    ["a shell command", qemuWith("rm -rf /"), /expected "-option value"/],
  ])("%s", (_, config, message) => {
    const err = refusal(() => parseQemuConfig(config));
    expect(err.message).toMatch(message);
    expect(err.line).toBeGreaterThan(0);
  });

  test("a refusal names the line and the option", () => {
    const err = refusal(() => parseQemuConfig(qemuWith("-vnc 0.0.0.0:0")));
    expect(err.line).toBe(lineOf(qemuWith("-vnc 0.0.0.0:0"), "-vnc"));
    expect(err.field).toBe("-vnc");
    expect(err.message.startsWith(`config line ${err.line}: -vnc is not an option the node agent runs`)).toBe(true);
  });
});

/** The domain XML with snippet inserted before `before` (default: the memballoon line). */
const xmlWith = (snippet: string, before = "    <memballoon") => {
  if (!LIBVIRT.includes(before)) throw new Error(`${before} not in the XML`);
  return LIBVIRT.replace(before, `${snippet}\n${before}`);
};
const xmlReplacing = (from: string | RegExp, to: string) => {
  const out = LIBVIRT.replace(from, to);
  if (out === LIBVIRT) throw new Error(`${String(from)} not in the XML`);
  return out;
};
const DEVICES = "it allows <emulator>, <serial>, <interface>, <memballoon>";

describe("libvirt: the template's renders are accepted", () => {
  test.each(renderCases("libvirt").map((c) => [c.name, c.input] as const))("%s", (_, input) => {
    const xml = renderVmConfig(input);
    const { facts } = parseLibvirtDomain(xml);
    expect(facts.imageId).toBe(ID);
    const defined = resolveLibvirtDomain(xml, { resolveImage: (id, f) => `/store/${id}/${f}`, consolePath: "/state/vm/console & <log>" });
    expect(defined).toContain(`<kernel>/store/${ID}/vmlinuz</kernel>`);
    expect(defined).toContain(`<initrd>/store/${ID}/initrd.img</initrd>`);
    expect(defined).toContain("<source path='/state/vm/console &amp; &lt;log&gt;' append='off'/>");
    expect(defined).not.toContain("image:");
    expect(defined).not.toContain("<!--");
    // What is defined is itself a domain of the same facts, but for the resolved files.
    expect(() => parseLibvirtDomain(defined)).toThrow(/<kernel> expects image:<id>\/vmlinuz/);
  });
});

describe("libvirt: hostile domain XML is refused, naming the line of the offending element", () => {
  test.each<[string, string, RegExp]>([
    [
      "a DOCTYPE with an external entity",
      `<!DOCTYPE domain [<!ENTITY x SYSTEM "file:///etc/shadow">]>\n${LIBVIRT}`,
      /^config line 1: a DOCTYPE declaration is not allowed in a domain XML/,
    ],
    ["an ENTITY declaration", `<!ENTITY x "y">\n${LIBVIRT}`, /^config line 1: an ENTITY declaration is not allowed/],
    [
      "an undeclared entity",
      xmlReplacing("VSE virtual cluster", "&xxe; VSE virtual cluster"),
      /^config line 4: the entity reference "&xxe;" in <description> is not allowed \(only &lt; &gt; &amp; &quot; &apos; and numeric references to printable characters\)$/,
    ],
    ["a numeric reference to a newline", xmlReplacing("quiet ", "quiet&#10;"), /the entity reference "&#10;" in <cmdline> is not allowed/],
    ["a numeric reference to ESC", xmlReplacing("quiet ", "quiet&#x1b;"), /the entity reference "&#x1b;" in <cmdline> is not allowed/],
    [
      "a bare ampersand",
      xmlReplacing("VSE virtual cluster", "VSE & cluster"),
      /the entity reference "& " in <description> is not allowed|the entity reference "&" in <description>/,
    ],
    ["an XML declaration", `<?xml version='1.0'?>\n${LIBVIRT}`, /^config line 1: processing instructions \(including <\?xml …\?>\) are not allowed/],
    ["a CDATA section", xmlReplacing("quiet ", "quiet <![CDATA[x]]>"), /a CDATA section is not allowed/],
    [
      "qemu:commandline",
      xmlWith("  <qemu:commandline>\n    <qemu:arg value='-vnc'/>\n  </qemu:commandline>", "  <devices>"),
      /^config line \d+: <qemu:commandline> is not an element the node agent accepts in <domain> \(it allows <name>, <description>,/,
    ],
    [
      "the qemu namespace",
      xmlReplacing("<domain type='kvm'>", "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"),
      /^config line 2: <domain> has no attribute xmlns:qemu the node agent accepts \(it allows type\)$/,
    ],
    [
      "a VNC display",
      xmlWith("    <graphics type='vnc' port='5900' listen='0.0.0.0'/>"),
      new RegExp(`^config line ${lineOf(LIBVIRT, "    <memballoon")}: <graphics> is not an element the node agent accepts in <devices> \\(${DEVICES}\\)$`),
    ],
    ["a SPICE display", xmlWith("    <graphics type='spice' autoport='yes'/>"), /<graphics> is not an element/],
    [
      "a host file as a disk",
      xmlWith("    <disk type='file' device='disk'>\n      <source file='/etc/shadow'/>\n      <target dev='vda'/>\n    </disk>"),
      /<disk> is not an element the node agent accepts in <devices>/,
    ],
    ["a host directory share", xmlWith("    <filesystem type='mount'><source dir='/'/><target dir='host'/></filesystem>"), /<filesystem> is not an element/],
    ["a host device", xmlWith("    <hostdev mode='subsystem' type='usb'/>"), /<hostdev> is not an element/],
    ["a channel", xmlWith("    <channel type='unix'><target type='virtio'/></channel>"), /<channel> is not an element/],
    ["a TCP console", xmlWith("    <console type='tcp'><source mode='bind' host='0.0.0.0' service='2445'/></console>"), /<console> is not an element/],
    [
      "a libvirt network interface",
      xmlWith("    <interface type='network'><source network='default'/></interface>"),
      /^config line \d+: <interface> type expects mcast \(QEMU's socket backend on a multicast group; no network, bridge, user, direct or other interface\), found "network"$/,
    ],
    ["a bridge interface", xmlWith("    <interface type='bridge'><source bridge='br0'/></interface>"), /<interface> type expects mcast/],
    ["a user-net interface", xmlWith("    <interface type='user'/>"), /<interface> type expects mcast/],
    [
      "a multicast group outside 239.255/16",
      xmlReplacing(/<source address='239\.255\.[0-9.]+'/, "<source address='224.0.0.1'"),
      /<source> address expects a multicast group 239\.255\.<0-255>\.<1-255>, found "224\.0\.0\.1"/,
    ],
    [
      "an interface with a script",
      xmlReplacing("<model type='virtio'/>", "<model type='virtio'/>\n      <script path='/tmp/x'/>"),
      /<script> is not an element the node agent accepts in <interface> \(it allows <mac>, <source>, <model>\)/,
    ],
    [
      "a second serial",
      xmlWith("    <serial type='file'>\n      <source path='agent:console' append='off'/>\n      <target port='1'/>\n    </serial>"),
      /^config line \d+: a second <serial> in <devices>; it may appear once$/,
    ],
    [
      "a pty serial",
      xmlReplacing("<serial type='file'>", "<serial type='tcp'>"),
      /<serial> type expects file \(a console file; no pty, tcp, udp, unix or other serial\), found "tcp"/,
    ],
    [
      "a console file of the user's choosing",
      xmlReplacing("path='agent:console'", "path='/etc/cron.d/x'"),
      new RegExp(
        `^config line ${lineOf(LIBVIRT, "path='agent:console'")}: <source> path expects agent:console \\(the node agent picks the console file\\), found "/etc/cron\\.d/x"$`,
      ),
    ],
    [
      "an extra attribute on the console source",
      xmlReplacing("append='off'/>", "append='off' mode='bind'/>"),
      /<source> has no attribute mode the node agent accepts \(it allows path, append\)/,
    ],
    [
      "a name that climbs directories",
      xmlReplacing(/<name>[^<]*<\/name>/, "<name>../../etc/x</name>"),
      /^config line 3: <name> expects vse-<cluster key: 10 hex digits>-<VM name: .*>, found "\.\.\/\.\.\/etc\/x"$/,
    ],
    ["another emulator", xmlReplacing("/usr/bin/qemu-system-x86_64", "/tmp/evil"), /<emulator> expects \/usr\/bin\/qemu-system-x86_64, found "\/tmp\/evil"/],
    [
      "a second emulator",
      xmlReplacing(
        "<emulator>/usr/bin/qemu-system-x86_64</emulator>",
        "<emulator>/usr/bin/qemu-system-x86_64</emulator>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>",
      ),
      /a second <emulator> in <devices>/,
    ],
    [
      "a kernel from a host path",
      xmlReplacing(/<kernel>[^<]*<\/kernel>/, "<kernel>/etc/passwd</kernel>"),
      /^config line 10: <kernel> expects image:<id>\/vmlinuz from the agent's image store \(<id>: 64 lower-case hex digits\), found "\/etc\/passwd"$/,
    ],
    ["a kernel reference that climbs", xmlReplacing(/<kernel>[^<]*<\/kernel>/, "<kernel>image:../x/vmlinuz</kernel>"), /<kernel> expects image:<id>\/vmlinuz/],
    [
      "kernel and initrd from different images",
      xmlReplacing(/<initrd>[^<]*<\/initrd>/, `<initrd>image:${OTHER}/initrd.img</initrd>`),
      /<initrd> names image a{64} but <kernel> names image/,
    ],
    [
      "a firmware loader",
      xmlReplacing("<cmdline>", "<loader readonly='yes' type='rom'>/etc/shadow</loader>\n    <cmdline>"),
      /<loader> is not an element the node agent accepts in <os> \(it allows <type>, <kernel>, <initrd>, <cmdline>\)/,
    ],
    ["no kernel", xmlReplacing(/ *<kernel>[^<]*<\/kernel>\n/, ""), /^config line 8: <os> has no <kernel>, which the node agent requires$/],
    ["a control character", xmlReplacing("quiet", "quiet\x1b"), /control character U\+001B \(escape\)/],
    ["a carriage return", LIBVIRT.replace(/\n/g, "\r\n"), /^config line 1: control character U\+000D \(carriage return\)/],
    [
      "a 5 KB command line",
      xmlReplacing("quiet ", `quiet ${"a".repeat(5000)} `),
      /<cmdline> expects a kernel command line of printable ASCII, at most 4096 bytes/,
    ],
    ["memory beyond the limit", xmlReplacing(/<memory unit='MiB'>\d+/, "<memory unit='MiB'>99999999"), /<memory> expects MiB from 16 to 1048576/],
    ["memory in another unit", xmlReplacing("<memory unit='MiB'>", "<memory unit='GiB'>"), /<memory> unit expects MiB, found "GiB"/],
    [
      "current memory other than memory",
      xmlReplacing(/<currentMemory unit='MiB'>\d+/, "<currentMemory unit='MiB'>1024"),
      /<currentMemory> must equal <memory>/,
    ],
    ["a hypervisor other than QEMU", xmlReplacing("<domain type='kvm'>", "<domain type='xen'>"), /<domain> type expects one of qemu, kvm, found "xen"/],
    ["a seclabel", xmlWith("  <seclabel type='none'/>", "  <devices>"), /<seclabel> is not an element the node agent accepts in <domain>/],
    [
      "a crash action other than destroy",
      xmlReplacing("<on_crash>destroy</on_crash>", "<on_crash>coredump-restart</on_crash>"),
      /<on_crash> expects destroy, found "coredump-restart"/,
    ],
    ["a second root", `${LIBVIRT}<domain type='qemu'/>\n`, /<domain> after the end of <domain>: a domain XML has one root element/],
    ["text after the root", `${LIBVIRT}junk\n`, /text outside <domain>: "junk"/],
    ["an unterminated comment", `${LIBVIRT}<!-- x\n`, /a comment that never ends/],
    ["a double hyphen in a comment", `<!-- a -- b -->\n${LIBVIRT}`, /a comment may not contain '--'/],
    ["an element that is never closed", LIBVIRT.replace("</domain>", ""), /<domain> \(line 2\) is never closed/],
    ["mismatched closing tags", xmlReplacing("</os>", "</devices>"), /closing tag <\/devices> does not close <os>/],
  ])("%s", (_, xml, message) => {
    const err = refusal(() => parseLibvirtDomain(xml));
    expect(err.message).toMatch(message);
    expect(err.line).toBeGreaterThan(0);
  });

  test("resolveLibvirtDomain refuses what parseLibvirtDomain refuses, before resolving anything", () => {
    const resolveImage = jest.fn((id: string, f: string) => `/store/${id}/${f}`);
    expect(() => resolveLibvirtDomain(xmlWith("    <graphics type='vnc'/>"), { resolveImage, consolePath: "/c" })).toThrow(ConfigRefused);
    expect(resolveImage).not.toHaveBeenCalled();
    expect(() => resolveLibvirtDomain(LIBVIRT, { resolveImage, consolePath: "relative" })).toThrow(/not an absolute path/);
  });
});

describe("the cluster network across hosts: a NIC joins only its own cluster's group, bound only to its own host's address", () => {
  const HOST = "10.213.4.3";
  const OTHER_HOST = "10.213.4.2";
  const own: NetworkContext = { clusterKey: CASES_KEY, hostAddress: HOST };
  const otherKey = clusterKey("vse", "local", "intruder");
  const base = renderCases("qemu")[1].input;
  const render = (input: Partial<RenderInput>) => renderVmConfig({ ...base, ...input });
  const ownNet = clusterNetwork(CASES_KEY).mcast;
  const otherNet = clusterNetwork(otherKey).mcast;
  const onHost = render({ hostAddress: HOST });
  const netdevLine = (config: string) => lineOf(config, "-netdev ");

  test("the render binds the NIC to the host's address, the placeholder, or 127.0.0.1 by default; each accepted by its own agent", () => {
    expect(onHost).toContain(`-netdev socket,id=vse0,mcast=${ownNet.address}:${ownNet.port},localaddr=${HOST}\n`);
    expect(parseQemuConfig(onHost, own).facts.nics).toEqual([{ mac: nicsFor(CASES_KEY, 3)[0].mac, mcast: ownNet }]);
    const placeholder = render({ hostAddress: HOST_ADDRESS_PLACEHOLDER });
    expect(placeholder).toContain(`,localaddr=${HOST_ADDRESS_PLACEHOLDER}\n`);
    expect(parseQemuConfig(placeholder, own).facts.nics).toHaveLength(1);
    expect(parseQemuConfig(placeholder, { ...own, hostAddress: "127.0.0.1" }).facts.nics).toHaveLength(1);
    expect(QEMU).toContain(",localaddr=127.0.0.1\n");
    expect(parseQemuConfig(QEMU, { ...own, hostAddress: "127.0.0.1" }).facts.nics).toHaveLength(1);
  });

  test("the agent fills in its own address for the placeholder, and only there", () => {
    const paths = vmPaths("/run/vse/host-1/vms/md-sim-3");
    const resolve = (id: string, file: string) => `/store/${id}/${file}`;
    const argv = qemuArgs(render({ hostAddress: HOST_ADDRESS_PLACEHOLDER }), paths, resolve, HOST);
    expect(argv[argv.indexOf("-netdev") + 1]).toBe(`socket,id=vse0,mcast=${ownNet.address}:${ownNet.port},localaddr=${HOST}`);
    const fixed = qemuArgs(onHost, paths, resolve, "10.9.9.9");
    expect(fixed[fixed.indexOf("-netdev") + 1]).toBe(`socket,id=vse0,mcast=${ownNet.address}:${ownNet.port},localaddr=${HOST}`);
  });

  test.each<[string, string, RegExp]>([
    [
      "another cluster's group and port",
      onHost.replace(`mcast=${ownNet.address}:${ownNet.port}`, `mcast=${otherNet.address}:${otherNet.port}`),
      new RegExp(
        `joins ${otherNet.address.replace(/\./g, "\\.")}:${otherNet.port}; this cluster's network is ${ownNet.address.replace(/\./g, "\\.")}:${ownNet.port}$`,
      ),
    ],
    [
      "this cluster's group on another port",
      onHost.replace(`:${ownNet.port},`, `:${ownNet.port === 1024 ? 1025 : ownNet.port - 1},`),
      /this cluster's network is/,
    ],
    ["another cluster's MAC prefix", onHost.replace(nicsFor(CASES_KEY, 3)[0].mac, nicsFor(otherKey, 3)[0].mac), /is not of this cluster \(expected /],
    [
      "another host's address",
      render({ hostAddress: OTHER_HOST }),
      new RegExp(`is bound to ${OTHER_HOST}; a VM on this host sends only from its host's address ${HOST} \\(or agent:host-address\\)$`),
    ],
    ["loopback on a host with an address", render({ hostAddress: "127.0.0.1" }), /is bound to 127\.0\.0\.1; a VM on this host sends only from/],
  ])("%s", (_, config, message) => {
    const err = refusal(() => parseQemuConfig(config, own));
    expect(err.message).toMatch(message);
    expect(err.line).toBe(netdevLine(config));
    expect(err.field).toBe("-netdev");
    // Without the agent's context the grammar alone accepts it: the refusal is the agent's knowledge of its cluster and host.
    expect(parseQemuConfig(config).facts.nics).toHaveLength(1);
  });

  test.each<[string, string]>([
    ["the wildcard address", "0.0.0.0"],
    ["a 0/8 address", "0.1.2.3"],
    ["the broadcast address", "255.255.255.255"],
    ["a multicast address", "239.255.1.1"],
    ["a host name", "host-b.example"],
    ["an address with a port", `${HOST}:5000`],
    ["an extra option after it", `${HOST},reuseaddr=on`],
    ["an unknown placeholder", "agent:other-address"],
  ])("a NIC bound to %s is refused by the grammar itself", (_, addr) => {
    const config = onHost.replace(`localaddr=${HOST}`, `localaddr=${addr}`);
    const err = refusal(() => parseQemuConfig(config));
    expect(err.message).toMatch(/-netdev expects socket,id=vse<N>,mcast=.*localaddr=<the host's IPv4 address, or agent:host-address>, found/);
    expect(err.line).toBe(netdevLine(config));
  });

  test("libvirt: its mcast interface cannot name a local address, so it is accepted on this machine's loopback segment only", () => {
    const xml = renderVmConfig(renderCases("libvirt")[1].input);
    expect(parseLibvirtDomain(xml, { clusterKey: CASES_KEY, hostAddress: "127.0.0.1" }).facts.nics).toHaveLength(1);
    const onAHost = refusal(() => parseLibvirtDomain(xml, own));
    expect(onAHost.message).toMatch(
      /is not bound to a host address \(libvirt cannot say one for a multicast interface\); on host 10\.213\.4\.3 the cluster network needs hypervisor qemu$/,
    );
    expect(onAHost.field).toBe("interface");
    const foreign = refusal(() =>
      parseLibvirtDomain(xml.replace(`address='${ownNet.address}' port='${ownNet.port}'`, `address='${otherNet.address}' port='${otherNet.port}'`), {
        clusterKey: CASES_KEY,
        hostAddress: "127.0.0.1",
      }),
    );
    expect(foreign.message).toMatch(/this cluster's network is/);
  });
});
