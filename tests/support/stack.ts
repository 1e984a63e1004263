import * as crypto from "crypto";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { engineEnv, openStack, PROJECT_ROOT } from "../../provider/cli/engine";

/** A throw-away stack of the root project: own file backend, state and definitions, in a temp dir. */
export interface TestStack {
  name: string;
  dir: string;
  defsDir: string;
  stateRoot: string;
  stack: Awaited<ReturnType<typeof openStack>>;
  /** The agent state directory of one host of a cluster. */
  hostDir(cluster: string, host: number): string;
  cleanup(): Promise<void>;
}

export async function createTestStack(definitions: Record<string, string>): Promise<TestStack> {
  const name = `t-${crypto.randomBytes(4).toString("hex")}`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-e2e-"));
  const defsDir = path.join(dir, "defs");
  const stateRoot = path.join(dir, "state");
  fs.mkdirSync(defsDir);
  for (const [file, text] of Object.entries(definitions)) fs.writeFileSync(path.join(defsDir, file), text);
  const env = engineEnv({ backendUrl: `file://${path.join(dir, "backend")}`, passphrase: "test" });
  const stack = await openStack(name, env);
  await stack.setAllConfig({
    "vse:definitions": { value: defsDir },
    "vse:stateDir": { value: stateRoot },
  });
  return {
    name,
    dir,
    defsDir,
    stateRoot,
    stack,
    hostDir: (cluster, host) => path.join(stateRoot, "clusters", `vse.${name}.${cluster}`, `host-${host}`),
    async cleanup() {
      try {
        await stack.destroy();
        await stack.workspace.removeStack(name);
      } finally {
        fs.rmSync(path.join(PROJECT_ROOT, `Pulumi.${name}.yaml`), { force: true });
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

/** Live processes whose command line mentions dir: the QEMU and agent processes of one test stack. */
export function processesUnder(dir: string): { pid: number; argv: string[] }[] {
  const out = [];
  for (const e of fs.readdirSync("/proc")) {
    if (!/^[0-9]+$/.test(e)) continue;
    try {
      const argv = fs.readFileSync(`/proc/${e}/cmdline`, "utf8").split("\0").filter(Boolean);
      const stat = fs.readFileSync(`/proc/${e}/stat`, "utf8");
      if (/\) Z /.test(stat)) continue;
      if (argv.some((a) => a.includes(dir))) out.push({ pid: Number(e), argv });
    } catch {
      // the process ended while we looked
    }
  }
  return out;
}

export function qemuProcessesFor(dir: string, vmName: string): number[] {
  return processesUnder(dir)
    .filter((p) => path.basename(p.argv[0]).startsWith("qemu-system") && p.argv[p.argv.indexOf("-name") + 1] === vmName)
    .map((p) => p.pid);
}

export function exampleDefinitions(): string {
  return fs.readFileSync(path.join(PROJECT_ROOT, "examples", "local-cluster", "cluster.yaml"), "utf8");
}
