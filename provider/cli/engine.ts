import * as fs from "fs";
import * as path from "path";

export const PROJECT_ROOT = [path.resolve(__dirname, "..", ".."), path.resolve(__dirname, "..", "..", "..")].find((d) =>
  fs.existsSync(path.join(d, "Pulumi.yaml")),
)!;

/** The Pulumi engine's bin directory, as recorded by scripts/setup.sh. */
export function engineBinDir(): string {
  const file = path.join(PROJECT_ROOT, ".engine-bin");
  if (!fs.existsSync(file)) throw new Error(`${file} is missing: run \`npm run setup\` first (it builds the Pulumi engine)`);
  const dir = fs.readFileSync(file, "utf8").trim();
  if (!fs.existsSync(path.join(dir, "pulumi"))) throw new Error(`no pulumi binary in ${dir}: run \`npm run setup\` again`);
  return dir;
}

/**
 * Environment for running the engine: its bin directory first on PATH (it
 * holds the dynamic-provider plugin too, where the engine expects a bundled
 * plugin: see scripts/setup.sh), a local file backend and a passphrase secrets
 * provider unless the caller set others.
 */
export function engineEnv(overrides: { backendUrl?: string; passphrase?: string } = {}): Record<string, string> {
  const backendDir = path.join(PROJECT_ROOT, ".pulumi-state");
  return {
    PATH: [engineBinDir(), process.env.PATH ?? "/usr/bin:/bin"].join(":"),
    PULUMI_BACKEND_URL: overrides.backendUrl ?? process.env.PULUMI_BACKEND_URL ?? `file://${backendDir}`,
    PULUMI_CONFIG_PASSPHRASE: overrides.passphrase ?? process.env.PULUMI_CONFIG_PASSPHRASE ?? "vse-local",
    PULUMI_SKIP_UPDATE_CHECK: "true",
    PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK: "true",
  };
}

/** Opens (or creates) a stack of a Pulumi project (default: the root project) through the Automation API. */
export async function openStack(stackName: string, env: Record<string, string>, workDir: string = PROJECT_ROOT) {
  const { LocalWorkspace, PulumiCommand } = await import("@pulumi/pulumi/automation");
  const backend = env.PULUMI_BACKEND_URL;
  if (backend.startsWith("file://")) fs.mkdirSync(backend.slice("file://".length), { recursive: true });
  const pulumiCommand = await PulumiCommand.get({ root: path.dirname(engineBinDir()), skipVersionCheck: true });
  return LocalWorkspace.createOrSelectStack({ stackName, workDir }, { envVars: env, pulumiCommand });
}
