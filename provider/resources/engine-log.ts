// Not the package index: it loads the whole SDK (automation API, closure serializer, TypeScript).
import * as log from "@pulumi/pulumi/log";

/**
 * A warning in the engine's output from inside a dynamic provider, for a
 * cleanup step that failed after the operation itself was decided (so the
 * operation does not fail, but the user must hear of it). The dynamic-provider
 * host gets the engine's address as its first argument and does not hand it to
 * the SDK, so it is set here before logging.
 */
export async function warn(message: string): Promise<void> {
  connectEngine();
  await log.warn(message);
}

/**
 * Progress of a long step in the engine's output. The Node dynamic-provider
 * host does not pass a resource's URN to create/update, so the line cannot sit
 * on the resource's own row; it names the VM instead.
 */
export async function info(message: string): Promise<void> {
  connectEngine();
  await log.info(message);
}

function connectEngine(): void {
  const { getStore } = require("@pulumi/pulumi/runtime/state") as { getStore: () => { settings: { options: { engineAddr?: string } } } };
  const options = getStore().settings.options;
  const addr = process.argv[2];
  if (!options.engineAddr && addr && /^[\w.-]+:\d+$/.test(addr)) options.engineAddr = addr;
}
