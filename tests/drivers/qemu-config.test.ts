import { parseJob } from "../../provider/agent/agent";
import { ConfigRefused, configVmName, parseQemuConfig, qemuArgs, vmPaths } from "../../provider/drivers/qemu";

const ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const CONFIG = [
  "# comment",
  "-name vm-0",
  "",
  "-machine pc",
  "-accel tcg",
  "-m 256M",
  "-smp 1",
  `-kernel image:${ID}/vmlinuz`,
  `-initrd image:${ID}/initrd.img`,
  "-append console=ttyS0 panic=-1 quiet",
  "-nodefaults",
  "-no-user-config",
  "-display none",
  "",
].join("\n");
const resolve = (id: string, file: string) => `/store/${id}/${file}`;

test("the line-oriented config becomes an argument vector, values kept whole, image references unresolved", () => {
  const { args, facts } = parseQemuConfig(CONFIG);
  expect(args).toEqual([
    "-name",
    "vm-0",
    "-machine",
    "pc",
    "-accel",
    "tcg",
    "-m",
    "256M",
    "-smp",
    "1",
    "-kernel",
    `image:${ID}/vmlinuz`,
    "-initrd",
    `image:${ID}/initrd.img`,
    "-append",
    "console=ttyS0 panic=-1 quiet",
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
  ]);
  expect(facts).toEqual({
    name: "vm-0",
    machine: "pc",
    accel: "tcg",
    memoryMiB: 256,
    vcpus: 1,
    imageId: ID,
    kernelArgs: "console=ttyS0 panic=-1 quiet",
    nics: [],
  });
  expect(configVmName(CONFIG)).toBe("vm-0");
});

test("the agent resolves image references through its store and adds its own plumbing after the rendered options", () => {
  const args = qemuArgs(CONFIG, vmPaths("/state/vms/vm-0"), resolve);
  expect(args.slice(10, 14)).toEqual(["-kernel", `/store/${ID}/vmlinuz`, "-initrd", `/store/${ID}/initrd.img`]);
  expect(args.slice(-8)).toEqual([
    "-pidfile",
    "/state/vms/vm-0/qemu.pid",
    "-qmp",
    "unix:/state/vms/vm-0/qmp.sock,server=on,wait=off",
    "-chardev",
    "file,id=vse-console,path=/state/vms/vm-0/console.log",
    "-serial",
    "chardev:vse-console",
  ]);
  expect(() => qemuArgs(CONFIG, vmPaths("/state,x/vm-0"), resolve)).toThrow(/contains ','/);
  expect(() => qemuArgs(CONFIG, vmPaths("/state/vm-0"), () => "relative/path")).toThrow(/not an absolute path/);
});

test("a value that looks like an option stays a value when references are resolved", () => {
  const config = CONFIG.replace("-append console=ttyS0 panic=-1 quiet", "-append -kernel");
  const args = qemuArgs(config, vmPaths("/s/vm-0"), resolve);
  expect(args.slice(10, 16)).toEqual(["-kernel", `/store/${ID}/vmlinuz`, "-initrd", `/store/${ID}/initrd.img`, "-append", "-kernel"]);
});

test.each([
  ["-name vm-0\nrm -rf /", /^config line 2: expected "-option value" \(one QEMU option per line\), found "rm -rf \/"$/],
  ["-name vm-0\n-qmp tcp:0.0.0.0:4444", /^config line 2: -qmp is not an option the node agent runs; the node agent sets it itself \(it allows: -name, /],
  ["-m 256M", /the config has no -name line, which the node agent requires/],
])("a config the agent must refuse: %p", (config, message) => {
  expect(() => parseQemuConfig(config)).toThrow(ConfigRefused);
  expect(() => parseQemuConfig(config)).toThrow(message);
});

describe("job results are read between the image's markers", () => {
  const markers = { begin: "==vse-job:abc:begin==", end: "==vse-job:abc:end" };
  test("waiting until the end marker appears", () => {
    expect(parseJob("booting\r\n==vse-job:abc:begin==\r\n5\r\n", markers)).toEqual({ state: "waiting" });
    expect(parseJob("", markers)).toEqual({ state: "waiting" });
  });
  test("output and exit status, with CRs from the serial line removed", () => {
    expect(parseJob("[ 1.0] kernel\r\n==vse-job:abc:begin==\r\n5\r\nsecond line\r\n==vse-job:abc:end status=3==\r\n", markers)).toEqual({
      state: "done",
      exitCode: 3,
      output: "5\nsecond line\n",
    });
  });
  test("empty output and a job that prints something marker-like", () => {
    expect(parseJob("==vse-job:abc:begin==\n==vse-job:abc:end status=0==\n", markers)).toEqual({ state: "done", exitCode: 0, output: "" });
    expect(parseJob("==vse-job:abc:begin==\nx ==vse-job:abc:end status=9==\n==vse-job:abc:end status=0==\n", markers)).toEqual({
      state: "done",
      exitCode: 0,
      output: "x ==vse-job:abc:end status=9==\n",
    });
  });
});
