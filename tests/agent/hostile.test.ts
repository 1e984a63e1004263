// Hostile requests against a real agent daemon: option and XML injection, path
// traversal, oversized and slow requests, wrong and foreign tokens, control
// characters. Each is refused with the status it deserves, nothing starts, and
// the agent keeps serving.
import * as net from "net";
import { newClusterToken, VmSpec } from "../../provider/agent/protocol";
import { AgentRecord } from "../../provider/allocation/local";
import { clusterKey } from "../../provider/drivers/network";
import { SERVER_LIMITS } from "../../provider/agent/server";
import { rawRequest, testCluster, TestCluster, vmSpec } from "../support/agent";
import { processesUnder } from "../support/stack";

jest.setTimeout(5 * 60 * 1000);

let c: TestCluster;
let agent: AgentRecord;
let QEMU: VmSpec;
let LIBVIRT: VmSpec;

beforeAll(async () => {
  c = await testCluster();
  agent = await c.start(0);
  QEMU = vmSpec(c, "vm-a");
  LIBVIRT = vmSpec(c, "vm-a", { hypervisor: "libvirt" });
});

afterAll(async () => {
  const dir = c.dir;
  await c.stop();
  expect(processesUnder(dir)).toEqual([]);
});

/** The QEMU config with a line added before -nodefaults. */
const qemuWith = (line: string): VmSpec => ({ ...QEMU, config: QEMU.config.replace("-nodefaults\n", `${line}\n-nodefaults\n`) });
/** The QEMU config with the line starting with prefix replaced. */
const qemuReplacing = (prefix: string, line: string): VmSpec => ({
  ...QEMU,
  config: QEMU.config
    .split("\n")
    .map((l) => (l.startsWith(prefix) ? line : l))
    .join("\n"),
});
const qemuWithout = (prefix: string): VmSpec => ({
  ...QEMU,
  config: QEMU.config
    .split("\n")
    .filter((l) => !l.startsWith(prefix))
    .join("\n"),
});
const libvirtWith = (element: string): VmSpec => ({ ...LIBVIRT, config: LIBVIRT.config.replace("<devices>", `<devices>\n    ${element}`) });
const libvirtReplacing = (from: string | RegExp, to: string): VmSpec => ({ ...LIBVIRT, config: LIBVIRT.config.replace(from, to) });

const OPTION_INJECTIONS = [
  "-vnc 0.0.0.0:0",
  "-drive file=/etc/shadow,format=raw",
  "-qmp-pretty tcp:0.0.0.0:4444,server=on,wait=off",
  "-qmp tcp:0.0.0.0:4445,server=on,wait=off",
  "-monitor tcp:0.0.0.0:4446,server,nowait",
  "-gdb tcp::1234",
  "-s",
  "-S",
  "-chardev socket,id=c0,host=0.0.0.0,port=4447,server=on,wait=off",
  "-serial tcp:0.0.0.0:4448,server,nowait",
  "-netdev user,id=n9,hostfwd=tcp::2222-:22",
  "-netdev tap,id=n9,script=/tmp/x.sh",
  "-netdev socket,id=n9,listen=0.0.0.0:4449",
  "-device vfio-pci,host=00:02.0",
  "-fsdev local,id=f,path=/,security_model=none",
  "-virtfs local,path=/,mount_tag=root,security_model=none",
  "-object memory-backend-file,id=m,mem-path=/etc/shadow,size=1M",
  "-plugin /tmp/evil.so",
  "-readconfig /etc/qemu.conf",
  "-loadvm snap",
  "-incoming tcp:0.0.0.0:4450",
  "-bios /etc/shadow",
  "-L /",
  "-fda /etc/shadow",
  "-hda /etc/shadow",
  "-cdrom /etc/shadow",
  "-pflash /etc/shadow",
  "-mem-path /etc",
  "-runas nobody",
  "-chroot /",
  "-daemonize",
  "-D /etc/cron.d/x",
  "-trace events=/etc/shadow",
  "-sandbox off",
  "-spice port=5900,disable-ticketing=on",
  "-audiodev wav,id=a,path=/etc/x.wav",
  "-smbios file=/etc/shadow",
  "-acpitable file=/etc/shadow",
  "-fw_cfg name=opt/x,file=/etc/shadow",
  "-pidfile /etc/x.pid",
  "-icount shift=auto",
];

const VALUE_INJECTIONS = (): [string, VmSpec][] => [
  ["a kernel from a host path", qemuReplacing("-kernel", "-kernel /etc/passwd")],
  ["an initrd from a host path", qemuReplacing("-initrd", "-initrd /etc/shadow")],
  ["a kernel path traversal", qemuReplacing("-kernel", "-kernel image:../../../../etc/vmlinuz")],
  ["an image id that is not a content id", qemuReplacing("-kernel", "-kernel image:abc/vmlinuz")],
  ["a kernel and initrd of different images", qemuReplacing("-initrd", `-initrd image:${"b".repeat(64)}/initrd.img`)],
  ["an image not in the store", { ...QEMU, config: QEMU.config.replace(/image:[0-9a-f]{64}\//g, `image:${"c".repeat(64)}/`) }],
  ["a machine option smuggled after a comma", qemuReplacing("-machine", "-machine pc,memory-backend=m")],
  ["an accel option smuggled after a comma", qemuReplacing("-accel", "-accel tcg,thread=multi")],
  ["the display as VNC", qemuReplacing("-display", "-display vnc=0.0.0.0:0")],
  ["the display as GTK", qemuReplacing("-display", "-display gtk")],
  ["memory beyond any machine", qemuReplacing("-m ", "-m 99999999M")],
  ["memory with a suffix trick", qemuReplacing("-m ", "-m 128M,slots=4,maxmem=1T")],
  ["no vCPUs", qemuReplacing("-smp", "-smp 0")],
  ["a hundred thousand vCPUs", qemuReplacing("-smp", "-smp 100000")],
  ["another VM's name", qemuReplacing("-name", "-name vm-b")],
  ["a name with a path", qemuReplacing("-name", "-name ../vm-a")],
  ["a second -m", qemuWith("-m 256M")],
  ["no -no-user-config (QEMU would read another config)", qemuWithout("-no-user-config")],
  ["no -nodefaults", qemuWithout("-nodefaults")],
  ["a shell line", qemuWith("rm -rf /")],
  ["an option in upper case", qemuWith("-VNC :0")],
  ["a NIC joining another cluster's network", qemuWith(`-netdev socket,id=vse0,mcast=239.255.1.1:20001,localaddr=127.0.0.1`)],
  ["a NIC on all interfaces", qemuWith(`-netdev socket,id=vse0,mcast=239.255.1.1:20001,localaddr=0.0.0.0`)],
  ["a NIC with a ROM file", qemuWith(`-device virtio-net-pci,netdev=vse0,mac=02:00:00:00:00:01,romfile=/etc/shadow`)],
  ["a kernel command line over 4 KiB", qemuReplacing("-append", `-append console=ttyS0 ${"x".repeat(5000)}`)],
];

const XML_INJECTIONS = (): [string, VmSpec][] => [
  ["a DOCTYPE with an entity", { ...LIBVIRT, config: `<!DOCTYPE domain [<!ENTITY x SYSTEM "file:///etc/shadow">]>\n${LIBVIRT.config}` }],
  ["a qemu:commandline", libvirtWith("<qemu:commandline><qemu:arg value='-vnc'/></qemu:commandline>")],
  ["a VNC listener", libvirtWith("<graphics type='vnc' port='5900' listen='0.0.0.0'/>")],
  ["a host disk", libvirtWith("<disk type='file' device='disk'><source file='/etc/shadow'/><target dev='vda'/></disk>")],
  ["a host filesystem", libvirtWith("<filesystem type='mount'><source dir='/'/><target dir='root'/></filesystem>")],
  ["a host device", libvirtWith("<hostdev mode='subsystem' type='pci'/>")],
  ["a TCP console", libvirtWith("<console type='tcp'><source mode='bind' host='0.0.0.0' service='4444'/></console>")],
  ["a bridged NIC", libvirtWith("<interface type='bridge'><source bridge='br0'/></interface>")],
  ["a user-mode NIC", libvirtWith("<interface type='user'/>")],
  ["a channel", libvirtWith("<channel type='unix'><source mode='bind' path='/tmp/c'/></channel>")],
  ["another emulator", libvirtReplacing(/<emulator>[^<]*<\/emulator>/, "<emulator>/tmp/evil</emulator>")],
  ["a console file of the caller's choosing", libvirtReplacing("path='agent:console'", "path='/etc/cron.d/x'")],
  ["a kernel from a host path", libvirtReplacing(/<kernel>[^<]*<\/kernel>/, "<kernel>/etc/passwd</kernel>")],
  ["a domain name without the cluster key", libvirtReplacing(/<name>[^<]*<\/name>/, "<name>vm-a</name>")],
  ["a domain name of another cluster", libvirtReplacing(/<name>vse-[0-9a-f]{10}-/, `<name>vse-${clusterKey("x", "y", "z")}-`)],
  ["a processing instruction", { ...LIBVIRT, config: `<?xml-stylesheet href="file:///etc/shadow"?>\n${LIBVIRT.config}` }],
  ["CDATA", libvirtReplacing(/<cmdline>[^<]*<\/cmdline>/, "<cmdline><![CDATA[init=/bin/sh]]></cmdline>")],
  ["an unknown entity", libvirtReplacing(/<cmdline>[^<]*<\/cmdline>/, "<cmdline>&xxe;</cmdline>")],
];

const CONTROL_CHARACTERS = (): [string, VmSpec][] => [
  ["NUL in a value", qemuReplacing("-append", "-append console=ttyS0\u0000 init=/bin/sh")],
  ["ESC in a value", qemuReplacing("-append", "-append console=ttyS0 \u001b[31m")],
  ["CR smuggling a line", qemuReplacing("-append", "-append console=ttyS0\r-vnc :0")],
  ["DEL", qemuReplacing("-name", "-name vm-a\u007f")],
  ["a tab", qemuReplacing("-smp", "-smp\t1")],
  ["a form feed", qemuWith("\f")],
  ["control characters in the markers", { ...QEMU, markers: { begin: "a\u0007", end: "b" } }],
  ["a newline in the markers", { ...QEMU, markers: { begin: "a\nb", end: "b" } }],
];

type Case = { what: string; method: string; path: string; token?: string; body?: string; status: number; error: RegExp };

function put(what: string, spec: unknown, status: number, error: RegExp, name = "vm-a"): Case {
  return { what, method: "PUT", path: `/v1/vms/${name}`, token: "ok", body: JSON.stringify(spec), status, error };
}

function cases(): Case[] {
  const foreign = newClusterToken(clusterKey("other", "stack", "c"));
  return [
    ...OPTION_INJECTIONS.map((line) => put(`option ${line.split(" ")[0]}`, qemuWith(line), 403, /^config line \d+: /)),
    ...VALUE_INJECTIONS().map(([what, spec]) => put(what, spec, 403, /^config/)),
    ...XML_INJECTIONS().map(([what, spec]) => put(`libvirt: ${what}`, spec, 403, /^config/)),
    ...CONTROL_CHARACTERS().map(([what, spec]) => put(what, spec, 400, /^(config line \d+: control character|markers\.begin: expected 1 to 128 printable)/)),
    // The same injections through the migration target endpoint.
    ...OPTION_INJECTIONS.slice(0, 5).map((line) => ({
      ...put(`incoming ${line.split(" ")[0]}`, qemuWith(line), 403, /^config line/),
      method: "POST",
      path: "/v1/vms/vm-a/incoming",
    })),
    // Path traversal in names, URLs and migration targets.
    put("a VM name with ..", QEMU, 400, /^name: expected a lowercase DNS label/, "..%2F..%2Fetc"),
    put("a VM name with an encoded slash", QEMU, 400, /^name: expected a lowercase DNS label/, "vm%2Fa"),
    put("a VM name with a NUL", QEMU, 400, /^url: expected at most 512 printable characters/, "vm%00a"),
    put("a malformed percent-encoding", QEMU, 400, /^url: malformed percent-encoding/, "vm%zz"),
    put("an upper-case VM name", QEMU, 400, /^name: expected a lowercase DNS label/, "VM-A"),
    { what: "a path beyond the API", method: "GET", path: "/v1/vms/vm-a/../../../etc/passwd", token: "ok", status: 404, error: /^no such endpoint/ },
    { what: "a path outside /v1", method: "GET", path: "/etc/passwd", token: "ok", status: 404, error: /^no such endpoint/ },
    { what: "a very long URL", method: "GET", path: `/v1/vms/${"a".repeat(600)}`, token: "ok", status: 400, error: /^url: expected at most 512/ },
    ...[
      "unix:/etc/shadow",
      "unix:relative/migrate.sock",
      "tcp:0.0.0.0:4444",
      "tcp:127.0.0.1:4444",
      "exec:cat /etc/shadow",
      "fd:3",
      "unix:CLUSTER/host-1/vms/vm-a/../../../../tmp/migrate.sock",
      "unix:CLUSTER/host-1/vms/vm-b/migrate.sock",
      "unix:CLUSTER/host-1/vms/vm-a/qmp.sock",
      "unix:CLUSTER/../other/host-1/vms/vm-a/migrate.sock",
    ].map((target) => ({
      what: `migration target ${target}`,
      method: "POST",
      path: "/v1/vms/vm-a/migrate",
      token: "ok",
      body: JSON.stringify({ target: target.replace("CLUSTER", c.clusterDir) }),
      status: 403,
      // A local agent names where it migrates to (its cluster's own sockets); a TCP target needs an agent on another host's address.
      error: target.startsWith("tcp:") ? /^target: this agent serves on this machine only; it migrates to unix:/ : /^target: expected unix:/,
    })),
    // Malformed bodies.
    { ...put("a truncated JSON body", "", 400, /^body: expected JSON/), body: '{"hypervisor": "qemu", "config": ' },
    put("a JSON string instead of an object", "{", 400, /^body: expected a JSON object/),
    { ...put("a body that is not JSON", "", 400, /^body: expected JSON/), body: "{not json" },
    put("an array", [], 400, /^body: expected a JSON object/),
    put("an unknown field", { ...QEMU, extra: 1 }, 400, /^extra: unknown field/),
    put("a hypervisor the agent does not run", { ...QEMU, hypervisor: "xen" }, 400, /^hypervisor: expected one of/),
    put("a config that is not a string", { ...QEMU, config: ["-vnc", ":0"] }, 400, /^config: expected a non-empty string/),
    put("a config over 64 KiB", { ...QEMU, config: `${QEMU.config}#${"x".repeat(70000)}\n` }, 400, /^config: expected at most 65536 characters/),
    put("a grace period of a week", { ...QEMU, stopGraceSeconds: 604800 }, 400, /^stopGraceSeconds: expected a number from 0 to 600/),
    put("an afterJob the agent does not know", { ...QEMU, afterJob: "reboot" }, 400, /^afterJob: expected/),
    put("markers with extra keys", { ...QEMU, markers: { ...QEMU.markers, x: "y" } }, 400, /^markers: expected an object with exactly/),
    {
      what: "a migrate body with extra keys",
      method: "POST",
      path: "/v1/vms/vm-a/migrate",
      token: "ok",
      body: '{"target":"x","uri":"y"}',
      status: 400,
      error: /^body: expected \{ target: string \}/,
    },
    {
      ...put("a migration target of the wrong hypervisor", LIBVIRT, 400, /^hypervisor: live migration needs "qemu"/),
      method: "POST",
      path: "/v1/vms/vm-a/incoming",
    },
    // Methods.
    { what: "POST on the VM list", method: "POST", path: "/v1/vms", token: "ok", status: 405, error: /^POST is not allowed/ },
    { what: "DELETE on the policy", method: "DELETE", path: "/v1/policy", status: 405, error: /^DELETE is not allowed/ },
    { what: "PUT on healthz", method: "PUT", path: "/healthz", status: 405, error: /^PUT is not allowed/ },
    { what: "GET on migrate", method: "GET", path: "/v1/vms/vm-a/migrate", token: "ok", status: 405, error: /^GET is not allowed/ },
    { what: "GET on shutdown", method: "GET", path: "/v1/shutdown", token: "ok", status: 405, error: /^GET is not allowed/ },
    // Tokens: missing, wrong, malformed, foreign; never an action.
    { ...put("no token on PUT", QEMU, 401, /^missing bearer token/), token: undefined },
    { what: "no token on shutdown", method: "POST", path: "/v1/shutdown", status: 401, error: /^missing bearer token/ },
    { what: "a wrong token on DELETE", method: "DELETE", path: "/v1/vms/vm-a", token: newClusterToken(c.key), status: 401, error: /^wrong bearer token/ },
    { what: "a wrong token on shutdown", method: "POST", path: "/v1/shutdown", token: newClusterToken(c.key), status: 401, error: /^wrong bearer token/ },
    { ...put("a token of another cluster on PUT", QEMU, 403, /^this token belongs to cluster/), token: foreign },
    {
      what: "a token of another cluster on shutdown",
      method: "POST",
      path: "/v1/shutdown",
      token: foreign,
      status: 403,
      error: /^this token belongs to cluster/,
    },
    {
      what: "a token of another cluster on migrate",
      method: "POST",
      path: "/v1/vms/vm-a/migrate",
      token: foreign,
      body: "{}",
      status: 403,
      error: /^this token belongs to cluster/,
    },
    { what: "a token that is a prefix of the real one", method: "GET", path: "/v1/vms", token: "PREFIX", status: 401, error: /^wrong bearer token/ },
    { what: "the real token with a suffix", method: "GET", path: "/v1/vms", token: "SUFFIX", status: 401, error: /^wrong bearer token/ },
    { what: "a token with a space", method: "GET", path: "/v1/vms", token: "a b", status: 401, error: /^malformed Authorization header/ },
    { what: "a token of 300 characters", method: "GET", path: "/v1/vms", token: "x".repeat(300), status: 401, error: /^malformed Authorization header/ },
  ];
}

test("at least 100 hostile requests are each refused with the expected status; nothing starts; the agent keeps serving", async () => {
  const all = cases();
  expect(all.length).toBeGreaterThanOrEqual(100);
  const got: string[] = [];
  for (const k of all) {
    const token =
      k.token === "ok" ? c.launch.token : k.token === "PREFIX" ? c.launch.token.slice(0, -1) : k.token === "SUFFIX" ? `${c.launch.token}0` : k.token;
    const res = await rawRequest(agent, k.method, k.path, { token, body: k.body });
    const line = `${k.what}: ${res.status} ${res.body.error ?? ""}`;
    got.push(line);
    expect({ what: k.what, status: res.status }).toEqual({ what: k.what, status: k.status });
    expect({ what: k.what, error: res.body.error }).toEqual({ what: k.what, error: expect.stringMatching(k.error) });
  }
  // Nothing was started or recorded, and the agent is the same process, still serving.
  expect((await rawRequest(agent, "GET", "/v1/vms", { token: c.launch.token })).body.vms).toEqual([]);
  expect(processesUnder(c.dir).filter((p) => !p.argv.some((a) => a.endsWith("agent/main.js")))).toEqual([]);
  expect((await c.client().health()).pid).toBe(agent.pid);
  console.log(`hostile requests: ${all.length} refused, each with its expected status`);
});

test("oversized requests get 413 (declared or streamed), headers beyond the limit 431", async () => {
  const big = Buffer.alloc(300 * 1024, "x");
  const declared = await rawRequest(agent, "PUT", "/v1/vms/vm-a", { token: c.launch.token, body: big });
  expect(declared.status).toBe(413);
  expect(declared.body.error).toMatch(/^body: expected at most 262144 bytes/);
  const chunked = await rawRequest(agent, "PUT", "/v1/vms/vm-a", { token: c.launch.token, body: big, headers: { "Transfer-Encoding": "chunked" } });
  expect(chunked.status).toBe(413);
  const headers = await rawRequest(agent, "GET", "/v1/vms", { token: c.launch.token, headers: { "X-Big": "y".repeat(20000) } });
  expect(headers.status).toBe(431);
  expect((await c.client().health()).ok).toBe(true);
});

function connect(): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(agent.url.replace(/^unix:/, ""), () => resolve(s));
    s.on("error", reject);
  });
}

function closed(s: net.Socket): Promise<string> {
  return new Promise((resolve) => {
    let data = "";
    s.on("data", (d) => (data += d.toString()));
    s.on("close", () => resolve(data));
  });
}

test("slow requests are cut off: headers that never end, a body that never ends", async () => {
  const slowHeaders = await connect();
  const headersDone = closed(slowHeaders);
  slowHeaders.write("GET /v1/vms HTTP/1.1\r\nHost: agent\r\n");
  const dribble = setInterval(() => slowHeaders.writable && slowHeaders.write("X-A: b\r\n"), 500);
  const t0 = Date.now();
  const answer = await headersDone;
  clearInterval(dribble);
  expect(Date.now() - t0).toBeLessThan(SERVER_LIMITS.headersTimeoutMs + 3000);
  expect(answer).toMatch(/^HTTP\/1\.1 408|^$/);

  const slowBody = await connect();
  const bodyDone = closed(slowBody);
  slowBody.write(`PUT /v1/vms/vm-a HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer ${c.launch.token}\r\nContent-Length: 1000\r\n\r\n{`);
  const t1 = Date.now();
  await bodyDone;
  expect(Date.now() - t1).toBeLessThan(SERVER_LIMITS.requestTimeoutMs + 3000);
  expect((await c.client().health()).ok).toBe(true);
  expect((await rawRequest(agent, "GET", "/v1/vms", { token: c.launch.token })).body.vms).toEqual([]);
});

test("a flood of idle connections is capped; the agent serves again once they go", async () => {
  const sockets: net.Socket[] = [];
  for (let i = 0; i < SERVER_LIMITS.maxConnections + 10; i++) {
    const s = await connect();
    s.on("error", () => undefined);
    sockets.push(s);
  }
  await new Promise((r) => setTimeout(r, 200));
  const dropped = sockets.filter((s) => s.destroyed || s.readableEnded).length;
  for (const s of sockets) s.destroy();
  await new Promise((r) => setTimeout(r, 200));
  expect(dropped).toBeGreaterThanOrEqual(10);
  expect((await c.client().health()).ok).toBe(true);
});
