// The benchmark's CPU-per-process sampler (provider/bench/process-cpu.ts): which process plays which
// role, and that CPU burned by a real child during the operation is counted for its role only.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import execa from "execa";
import { roleOf, withProcessCpu } from "../../provider/bench/process-cpu";

test("command lines of the engine, language host, plugin and agents get their roles", () => {
  expect(roleOf("/root/.cache/vse-provider/pulumi-engine/v3/bin/pulumi preview --exec-kind auto.local --stack s ")).toBe("engine");
  expect(roleOf("/usr/bin/node /p/node_modules/@pulumi/pulumi/cmd/run/index.js --monitor 127.0.0.1:1 ")).toBe("program");
  expect(roleOf("node /p/node_modules/@pulumi/pulumi/cmd/dynamic-provider/index.js 127.0.0.1:2 ")).toBe("plugin");
  expect(roleOf("/usr/bin/node /p/dist/provider/agent/main.js --state-dir /s ")).toBe("agents");
  // The Automation API's other commands and the bench itself are none of them.
  expect(roleOf("/bin/pulumi stack output --json ")).toBeUndefined();
  expect(roleOf("node dist/provider/cli/bench.js --only control-plane ")).toBeUndefined();
});

test("CPU a child burns during the operation is counted for its role, and nothing for the others (or for processes outside the scope)", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cpu-"));
  try {
    // A process whose command line looks like a node agent's, busy until it has used 0.8 s of CPU (asked rarely: the asking is a syscall).
    const script = path.join(dir, "agent", "main.js");
    fs.mkdirSync(path.dirname(script));
    fs.writeFileSync(script, "for (let i = 1; ; i++) if (i % 1e6 === 0 && process.cpuUsage().user >= 800000) break;\n");
    const { cpu } = await withProcessCpu(async () => {
      await execa(process.execPath, [script]);
    }, new RegExp(dir));
    expect(cpu.agents).toBeGreaterThan(0.7);
    expect(cpu.agents).toBeLessThan(2);
    expect(cpu.engine + cpu.program + cpu.plugin).toBe(0);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
