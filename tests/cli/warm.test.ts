// `vse warm` makes a warm environment's snapshot ahead of time, through the
// QEMU driver the agents use; the first VM an agent starts then restores it.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { main as vse } from "../../provider/cli/vse";
import type { EnvironmentModel } from "../../provider/model/resolve";
import { testCluster, vmSpec, waitForVm } from "../support/agent";
import { processesUnder } from "../support/stack";

jest.setTimeout(5 * 60 * 1000);

const COMMAND = "echo warm $((20+22))";
const DEFS = `apiVersion: vse.dev/v1
kind: Environment
metadata: { name: ahead }
spec:
  warm: true
  job: { command: ["/bin/sh", "-c", "${COMMAND}"] }
---
apiVersion: vse.dev/v1
kind: VmProfile
metadata: { name: p }
spec: { memory: 128MiB, vcpus: 1, accel: tcg }
---
apiVersion: vse.dev/v1
kind: VirtualCluster
metadata: { name: ahead }
spec: { environment: ahead, profile: p }
`;

test("vse warm makes the snapshot once; the first VM an agent starts then comes up warm", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-warm-cli-"));
  const cacheDir = path.join(dir, "cache");
  fs.writeFileSync(path.join(dir, "defs.yaml"), DEFS);
  const run = async () => {
    let out = "";
    const code = await vse(["warm", "defs.yaml", "--cache-dir", cacheDir], { stdout: (t) => (out += t), stderr: (t) => (out += t), cwd: dir });
    return { code, out };
  };
  const c = await testCluster({ cacheDir });
  try {
    const made = await run();
    expect(made).toEqual({ code: 0, out: expect.stringMatching(/^ahead: snapshot [0-9a-f]{12} made in \d+\.\d s\n$/) });
    expect(made.out).toMatch(/^ahead: snapshot [0-9a-f]{12} made in \d+\.\d s\n$/);
    expect(await run()).toEqual({ code: 0, out: expect.stringMatching(/^ahead: snapshot [0-9a-f]{12} already in the store\n$/) });
    // No VM of vse warm is left running.
    expect(processesUnder(os.tmpdir()).filter((p) => p.argv.some((a) => a.includes("vse-warm-")))).toEqual([]);

    await c.start(0);
    const env: EnvironmentModel = {
      name: "ahead",
      base: "busybox",
      warm: true,
      kernelArgs: [],
      job: { command: ["/bin/sh", "-c", COMMAND], env: {}, afterJob: "stay-up", timeoutSeconds: 300 },
    };
    await c.client().putVm("ahead-0", vmSpec(c, "ahead-0", { env }));
    const v = await waitForVm(c.client(), "ahead-0", (x) => x.job.state === "done");
    expect(v.observed.launch).toBe("warm");
    expect(v.job.output).toBe("warm 42\n");
  } finally {
    await c.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
