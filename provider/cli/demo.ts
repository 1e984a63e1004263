// `npm run demo`: brings up the default local virtual cluster (examples/local-cluster)
// with `pulumi up` on a local stack, prints each VM's job result and timing.
// `npm run demo -- --destroy` (or `npm run demo:down`) tears it down.
// Options: --stack NAME (default "local"), --definitions PATHS (comma-separated).
import { engineEnv, openStack } from "./engine";

function option(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

interface VmResult {
  status: string;
  output: string | null;
  exitCode: number | null;
  seconds: number | null;
}

async function main(): Promise<void> {
  const stackName = option("stack") ?? "local";
  const stack = await openStack(stackName, engineEnv());
  const definitions = option("definitions");
  if (definitions) await stack.setConfig("vse:definitions", { value: definitions });
  const print = (s: string) => process.stdout.write(s);

  if (process.argv.includes("--destroy")) {
    await stack.destroy({ onOutput: print });
    console.log(`\nstack ${stackName} destroyed: no VM or agent of it is running.`);
    return;
  }

  const t0 = Date.now();
  const res = await stack.up({ onOutput: print });
  const seconds = (Date.now() - t0) / 1000;
  const vms = (res.outputs.vms?.value ?? {}) as Record<string, VmResult>;
  console.log(`\n== job results (pulumi up took ${seconds.toFixed(1)} s) ==`);
  for (const [name, vm] of Object.entries(vms).sort()) {
    const output = (vm.output ?? "").trimEnd() || "(no output)";
    const timing = vm.seconds === null ? "" : `, job result ${vm.seconds.toFixed(1)} s after the VM was requested`;
    console.log(`${name}: ${output}  [exit ${vm.exitCode ?? "?"}, ${vm.status}${timing}]`);
  }
  console.log(`\nThe VMs stay up for inspection. Tear down with: npm run demo:down`);
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
