// What a VM's state records (the checkpoint holds it for every VM): the
// provider as a one-line module that loads the compiled provider by path, and the
// rendered config by its digest. Diff must judge states recorded either way,
// and states written before (the config's text in the outputs) alike.
import { createHash } from "crypto";
import * as path from "path";
import { PROJECT_ROOT } from "../../provider/cli/engine";
import { providerModule } from "../../provider/resources/provider-module";
import { VirtualMachineInputs, VirtualMachineOutputs, vmDiff } from "../../provider/resources/virtual-machine";

const requireFromString = require("require-from-string") as (code: string) => { handler: () => Record<string, unknown> };

const CONFIG = "# QEMU configuration of VM s-0\n-name s-0\n-machine pc\n-accel tcg\n-m 256M\n-smp 1\n";

const news = (config = CONFIG): VirtualMachineInputs => ({
  cluster: "s",
  vmName: "s-0",
  host: 0,
  agentUrl: "unix:/nonexistent/agent.sock",
  token: "vse1.0123456789.abcdef",
  agentCa: null,
  allocationRef: null,
  hypervisor: "qemu",
  imageId: "0".repeat(64),
  memoryMiB: 256,
  vcpus: 1,
  machine: "pc",
  accel: "tcg",
  kernelArgs: "",
  config,
  markers: { begin: "b", end: "e" },
  afterJob: "stay-up",
  jobTimeoutSeconds: 60,
  state: "running",
});

const observed = { status: "running", pid: 1, starts: 1, jobOutput: "5\n", jobExitCode: 0, jobSeconds: 1, message: null, launch: "cold" as const };

/** Outputs as this provider records them now: the config by its digest. */
function recordedNow(i: VirtualMachineInputs): VirtualMachineOutputs {
  const { config, ...rest } = i;
  return { ...rest, configDigest: createHash("sha256").update(config).digest("hex"), ...observed };
}

test("the provider module is one short line that loads the compiled module's provider", () => {
  const module = path.join(PROJECT_ROOT, "dist", "provider", "resources", "virtual-machine.js");
  const text = providerModule(module);
  expect(text.length).toBeLessThan(100 + module.length);
  const provider = requireFromString(text).handler();
  expect(Object.keys(provider).sort()).toEqual(["create", "delete", "diff", "read", "update"]);
});

test("diff finds no change against a state that records the config by its digest, and a changed config by it", async () => {
  const olds = recordedNow(news());
  expect(olds).not.toHaveProperty("config");
  expect(await vmDiff(olds, news())).toEqual({ changes: false, replaces: [], deleteBeforeReplace: false });
  const changed = await vmDiff(olds, news(CONFIG.replace("-m 256M", "-m 384M")));
  expect(changed.changes).toBe(true);
  expect(changed.replaces).toEqual([]);
});

test("diff judges a state written before digests (the config's text in the outputs) the same way", async () => {
  const olds: VirtualMachineOutputs = { ...news(), ...observed };
  expect(await vmDiff(olds, news())).toEqual({ changes: false, replaces: [], deleteBeforeReplace: false });
  expect((await vmDiff(olds, news(CONFIG.replace("-m 256M", "-m 384M")))).changes).toBe(true);
});
