import * as crypto from "crypto";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import type { EngineEvent, Stack, UpOptions, UpResult } from "@pulumi/pulumi/automation";
import { engineEnv, openStack, PROJECT_ROOT } from "../../provider/cli/engine";
import { clusterKey } from "../../provider/drivers/network";

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
    hostDir: (cluster, host) => path.join(stateRoot, "clusters", `${cluster}-${clusterKey("vse", name, cluster)}`, `host-${host}`),
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

/** A throw-away stack of any Pulumi project directory, with its own file backend, and the agents' state and the image cache in a temp dir. */
export interface ProjectStack {
  name: string;
  dir: string;
  stateRoot: string;
  cacheDir: string;
  stack: Awaited<ReturnType<typeof openStack>>;
  cleanup(): Promise<void>;
}

/** Opens a new stack of the project in workDir, with stack config vse:stateDir and vse:cacheDir set to dirs in a fresh temp dir. */
export async function createProjectStack(workDir: string): Promise<ProjectStack> {
  const name = `t-${crypto.randomBytes(4).toString("hex")}`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-e2e-"));
  const stateRoot = path.join(dir, "state");
  const cacheDir = path.join(dir, "cache");
  const env = engineEnv({ backendUrl: `file://${path.join(dir, "backend")}`, passphrase: "test" });
  let stack: ProjectStack["stack"] | undefined;
  const cleanup = async () => {
    try {
      if (stack) {
        await stack.destroy();
        await stack.workspace.removeStack(name);
      }
    } finally {
      fs.rmSync(path.join(workDir, `Pulumi.${name}.yaml`), { force: true });
      fs.rmSync(dir, { recursive: true, force: true });
    }
  };
  try {
    stack = await openStack(name, env, workDir);
    await stack.setAllConfig({ "vse:stateDir": { value: stateRoot }, "vse:cacheDir": { value: cacheDir } });
  } catch (err) {
    await cleanup();
    throw err;
  }
  return { name, dir, stateRoot, cacheDir, stack, cleanup };
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

/**
 * Ended: no process, or only its exit status left to collect (a zombie). Agents
 * started down the bootstrap tree outlive their parents and are re-parented to
 * this machine's init, which may reap them late.
 */
export function processEnded(pid: number): boolean {
  try {
    return /\) Z /.test(fs.readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return true;
  }
}

export function qemuProcessesFor(dir: string, vmName: string): number[] {
  return processesUnder(dir)
    .filter((p) => path.basename(p.argv[0]).startsWith("qemu-system") && p.argv[p.argv.indexOf("-name") + 1] === vmName)
    .map((p) => p.pid);
}

export function exampleDefinitions(): string {
  return fs.readFileSync(path.join(PROJECT_ROOT, "examples", "local-cluster", "cluster.yaml"), "utf8");
}

/**
 * `up`, then a `preview` that must show no changes at all (its change summary
 * has only "same"): a provider whose outputs do not match its next diff would
 * make every run after an up change something again. Throws naming the steps
 * that are not "same" and the inputs they change.
 */
export async function upAndCheckNoDiff(stack: Stack, opts?: UpOptions): Promise<UpResult> {
  const res = await stack.up(opts);
  const steps: string[] = [];
  const preview = await stack.preview({
    diff: true,
    onEvent: (e: EngineEvent) => {
      const m = e.resourcePreEvent?.metadata;
      if (!m || m.op === "same") return;
      const olds = (m.old?.inputs ?? {}) as Record<string, unknown>;
      const news = (m.new?.inputs ?? {}) as Record<string, unknown>;
      const changed = [...new Set([...Object.keys(olds), ...Object.keys(news)])].filter((k) => JSON.stringify(olds[k]) !== JSON.stringify(news[k]));
      steps.push(`${m.op} ${m.urn.split("::").pop()} (${m.diffs?.length ? m.diffs.join(", ") : changed.join(", ") || "no input changed"})`);
    },
  });
  const summary = preview.changeSummary ?? {};
  if (Object.keys(summary).some((k) => k !== "same")) {
    throw new Error(`preview right after up shows changes ${JSON.stringify(summary)}:\n${steps.join("\n")}`);
  }
  return res;
}
