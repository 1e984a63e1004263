import { parseJob } from "../../provider/agent/agent";
import { parseQemuConfig, qemuArgs, vmPaths } from "../../provider/drivers/qemu";

test("the line-oriented config becomes an argument vector, values kept whole", () => {
  const config = "# comment\n-name vm-0\n\n-m 256M\n-append console=ttyS0 panic=-1 quiet\n-nodefaults\n";
  expect(parseQemuConfig(config)).toEqual(["-name", "vm-0", "-m", "256M", "-append", "console=ttyS0 panic=-1 quiet", "-nodefaults"]);
});

test("the agent adds its own plumbing after the rendered options", () => {
  const args = qemuArgs("-name vm-0\n", vmPaths("/state/vms/vm-0"));
  expect(args).toEqual([
    "-name",
    "vm-0",
    "-pidfile",
    "/state/vms/vm-0/qemu.pid",
    "-qmp",
    "unix:/state/vms/vm-0/qmp.sock,server=on,wait=off",
    "-chardev",
    "file,id=vse-console,path=/state/vms/vm-0/console.log",
    "-serial",
    "chardev:vse-console",
  ]);
  expect(() => qemuArgs("-name vm-0\n", vmPaths("/state,x/vm-0"))).toThrow(/contains ','/);
});

test.each([
  ["-name vm-0\nrm -rf /", /line 2: expected "-option \[value\]"/],
  ["-name vm-0\n-qmp tcp:0.0.0.0:4444", /line 2: -qmp is set by the node agent/],
  ["-m 256M", /no -name line/],
])("a config the agent must refuse: %p", (config, message) => {
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
