import * as fs from "fs";
import * as path from "path";
import { LIFECYCLE, lifecycleRule, VM_INPUT_POLICY, vmChange, vmEffectiveChange } from "../../provider/model/lifecycle";
import { vmDiff, VirtualMachineOutputs } from "../../provider/resources/virtual-machine";

const SCHEMA_DIR = path.join(__dirname, "..", "..", "schema");

/** Every field path of a schema, following $refs into sibling schema files. */
function fieldPaths(schema: Record<string, unknown>, file: string, prefix: string, out: Set<string>): void {
  const resolve = (s: Record<string, unknown>, from: string): [Record<string, unknown>, string] => {
    const ref = s.$ref as string | undefined;
    if (!ref) return [s, from];
    const [refFile, pointer] = ref.split("#");
    const target = refFile || from;
    let node = JSON.parse(fs.readFileSync(path.join(SCHEMA_DIR, target), "utf8"));
    for (const seg of (pointer ?? "").split("/").filter(Boolean)) node = node[seg];
    return resolve(node, target);
  };
  const [s, from] = resolve(schema, file);
  const props = (s.properties ?? (s.items as Record<string, unknown> | undefined)?.properties) as Record<string, Record<string, unknown>> | undefined;
  if (!props) return;
  for (const [key, child] of Object.entries(props)) {
    const p = prefix ? `${prefix}.${key}` : key;
    out.add(p);
    fieldPaths(child, from, p, out);
  }
}

/** Every field path of every kind, "<Kind>.<path>", and which of them are leaves. */
function schemaFields(): { all: string[]; leaves: string[] } {
  const kinds: Record<string, string> = {
    Environment: "environment.schema.json",
    VmProfile: "vmprofile.schema.json",
    VirtualCluster: "virtualcluster.schema.json",
  };
  const all: string[] = [];
  for (const [kind, file] of Object.entries(kinds)) {
    const paths = new Set<string>();
    fieldPaths(JSON.parse(fs.readFileSync(path.join(SCHEMA_DIR, file), "utf8")), file, "", paths);
    all.push(...[...paths].map((p) => `${kind}.${p}`));
  }
  // Intermediate objects (spec, spec.job, metadata) are covered by their leaves.
  return { all, leaves: all.filter((p) => !all.some((q) => q.startsWith(`${p}.`))) };
}

test("every schema field of every kind has a lifecycle rule (its own row or its block's)", () => {
  expect(schemaFields().leaves.filter((f) => !lifecycleRule(f))).toEqual([]);
});

test("every row names a schema field, and every block row covers at least one", () => {
  const { all, leaves } = schemaFields();
  const stale = Object.keys(LIFECYCLE).filter((row) => (row.endsWith(".*") ? !leaves.some((f) => f.startsWith(row.slice(0, -1))) : !all.includes(row)));
  expect(stale).toEqual([]);
});

test("a field takes its own row first, else the longest block row it lies in", () => {
  // Rows of a made-up kind, nested, so every case of the lookup is met.
  const rows: Record<string, (typeof LIFECYCLE)[string]> = {
    "Test.spec.*": { policy: "in-place", why: "outer block" },
    "Test.spec.a.*": { policy: "restart", why: "inner block" },
    "Test.spec.a.b": { policy: "replace", why: "own row" },
  };
  Object.assign(LIFECYCLE, rows);
  try {
    expect(lifecycleRule("Test.spec.a.b")?.why).toBe("own row");
    expect(lifecycleRule("Test.spec.a.c")?.why).toBe("inner block");
    expect(lifecycleRule("Test.spec.a.b.deeper")?.why).toBe("inner block");
    expect(lifecycleRule("Test.spec.z")?.why).toBe("outer block");
    expect(lifecycleRule("Test.spec")).toBeUndefined();
    expect(lifecycleRule("Test.other")).toBeUndefined();
  } finally {
    for (const k of Object.keys(rows)) delete LIFECYCLE[k];
  }
  expect(lifecycleRule("VirtualCluster.spec.allocation.ssh.port")).toBe(LIFECYCLE["VirtualCluster.spec.allocation.ssh.*"]);
  expect(lifecycleRule("VirtualCluster.spec.allocation.port")).toBe(LIFECYCLE["VirtualCluster.spec.allocation.port"]);
  for (const name of ["constructor", "toString", "__proto__", "*", ".*"]) expect({ name, rule: lifecycleRule(name) }).toEqual({ name, rule: undefined });
});

test("every rule that names a VM input names a real one", () => {
  for (const [field, rule] of Object.entries(LIFECYCLE)) {
    if (rule.vmInput) expect({ field, known: rule.vmInput in VM_INPUT_POLICY }).toEqual({ field, known: true });
  }
});

test("the strongest policy of the changed inputs wins", () => {
  expect(vmChange([])).toEqual({ policy: undefined, replaces: [] });
  expect(vmChange(["jobTimeoutSeconds"])).toEqual({ policy: "in-place", replaces: [] });
  expect(vmChange(["memoryMiB", "config"])).toEqual({ policy: "restart", replaces: [] });
  expect(vmChange(["memoryMiB", "imageId", "config"])).toEqual({ policy: "replace", replaces: ["imageId"] });
});

test("a new host migrates a QEMU VM, but replaces it where migration cannot happen", () => {
  expect(vmChange(["host", "agentUrl"])).toEqual({ policy: "migrate", replaces: [] });
  expect(vmEffectiveChange(["host", "agentUrl"], { hypervisor: "qemu", agentsReplaced: false })).toEqual({ policy: "migrate", replaces: [] });
  expect(vmEffectiveChange(["host", "agentUrl"], { hypervisor: "libvirt", agentsReplaced: false })).toEqual({ policy: "replace", replaces: ["host"] });
  expect(vmEffectiveChange(["host", "agentUrl"], { hypervisor: "qemu", agentsReplaced: true })).toEqual({ policy: "replace", replaces: ["host"] });
  // Without a new host, a new agent means new agents: a replace.
  expect(vmEffectiveChange(["agentUrl"], { hypervisor: "qemu", agentsReplaced: true })).toEqual({ policy: "replace", replaces: ["agentUrl"] });
});

describe("the VirtualMachine diff reads the table", () => {
  const base = {
    cluster: "c",
    vmName: "c-0",
    host: 0,
    agentUrl: "http://127.0.0.1:1",
    token: "t",
    agentCa: null,
    allocationRef: null,
    hypervisor: "qemu",
    imageId: "i",
    memoryMiB: 256,
    vcpus: 1,
    machine: "pc",
    accel: "tcg",
    kernelArgs: "",
    config: "-name c-0\n-m 256M\n",
    markers: { begin: "b", end: "e" },
    afterJob: "stay-up" as const,
    jobTimeoutSeconds: 60,
  };
  const olds: VirtualMachineOutputs = {
    ...base,
    status: "running",
    pid: 1,
    starts: 1,
    jobOutput: "5\n",
    jobExitCode: 0,
    jobSeconds: 1,
    message: null,
    launch: "cold",
  };

  test("no change, no diff", async () => {
    expect(await vmDiff(olds, base)).toEqual({ changes: false, replaces: [], deleteBeforeReplace: false });
  });
  test("memory restarts in place (an update, not a replace)", async () => {
    expect(await vmDiff(olds, { ...base, memoryMiB: 384, config: "-name c-0\n-m 384M\n" })).toEqual({
      changes: true,
      replaces: [],
      deleteBeforeReplace: false,
    });
  });
  test("a new image replaces, deleting first so the name is free on the agent", async () => {
    expect(await vmDiff(olds, { ...base, imageId: "j" })).toEqual({ changes: true, replaces: ["imageId"], deleteBeforeReplace: true });
  });
  test("a new host is an update (a live migration); with the cluster's agents being replaced it is a replace", async () => {
    expect(await vmDiff(olds, { ...base, host: 1, agentUrl: "http://127.0.0.1:2" })).toEqual({ changes: true, replaces: [], deleteBeforeReplace: false });
    const unknown = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";
    expect(await vmDiff(olds, { ...base, host: 1, agentUrl: unknown })).toEqual({ changes: true, replaces: ["host"], deleteBeforeReplace: true });
  });
  test("drift seen by refresh is repaired by an update", async () => {
    expect(await vmDiff({ ...olds, status: "failed" }, base)).toEqual({ changes: true, replaces: [], deleteBeforeReplace: false });
    expect(await vmDiff({ ...olds, status: "completed" }, base)).toEqual({ changes: false, replaces: [], deleteBeforeReplace: false });
  });
});
