import * as fs from "fs";
import * as path from "path";
import { parseAllDocuments } from "yaml";
import { main, unifiedDiff } from "../../provider/cli/vse";
import { loadDefinitions } from "../../provider/model/load";
import { resolveClusters } from "../../provider/model/resolve";
import { offlineAgentInputs, planClusters, vmInputs } from "../../provider/program/plan";
import { vmDiff, VirtualMachineOutputs } from "../../provider/resources/virtual-machine";
import { CLUSTER, ENV, locate, PROFILE, tempDir, writeFiles } from "../model/fixtures";

const execa = require("execa") as typeof import("execa");

let dir: string;
let cache: string;
beforeEach(() => {
  dir = fs.realpathSync(tempDir("vse-cli-"));
  cache = path.join(dir, ".cache");
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Runs the CLI in-process, in dir, and captures its output. */
async function vse(...argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const code = await main(argv, { cwd: dir, stdout: (t) => (stdout += t), stderr: (t) => (stderr += t) });
  return { code, stdout, stderr };
}

const VALID = { "defs/env.yaml": ENV, "defs/profile.yaml": PROFILE, "defs/cluster.yaml": CLUSTER };

describe("vse validate", () => {
  test("valid definitions exit 0 with a summary", async () => {
    writeFiles(dir, VALID);
    const r = await vse("validate", "defs");
    expect(r).toEqual({ code: 0, stdout: "3 definitions valid (1 clusters, 2 VMs)\n", stderr: "" });
  });

  test("problems exit 1, each as file:line:column: field: message", async () => {
    const profile = PROFILE + "  memory: 4XB\n";
    writeFiles(dir, { ...VALID, "defs/profile.yaml": profile });
    const r = await vse("validate", "defs");
    expect(r.code).toBe(1);
    const at = locate(profile, "memory");
    expect(r.stderr).toContain(`defs/profile.yaml:${at.line}:${at.column}: spec.memory: expected a memory size`);
    expect(r.stderr).toContain("1 problem\n");
    expect(r.stdout).toBe("");
  });

  test("--format json lists {file,line,column,field,message}", async () => {
    const cluster = CLUSTER.replace("profile: compute-small", "profile: compute-smal");
    writeFiles(dir, { ...VALID, "defs/cluster.yaml": cluster });
    const r = await vse("validate", "defs", "--format", "json");
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout)).toEqual([
      {
        file: "defs/cluster.yaml",
        ...locate(cluster, "profile:"),
        field: "spec.profile",
        message: 'unknown VmProfile "compute-smal"; did you mean "compute-small"?',
      },
    ]);
    writeFiles(dir, VALID);
    expect(await vse("validate", "defs", "--format=json")).toEqual({ code: 0, stdout: "[]\n", stderr: "" });
  });

  test("a missing path is a located problem; usage errors exit 2", async () => {
    const r = await vse("validate", "nope.yaml", "--format", "json");
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout)).toEqual([{ file: "nope.yaml", line: 1, column: 1, field: "", message: "no such file or directory" }]);
    expect((await vse("validate")).code).toBe(2);
    expect((await vse("validate", "defs", "--format", "xml")).stderr).toContain("--format must be one of text, json");
    expect((await vse("frobnicate")).stderr).toContain('unknown command "frobnicate"');
    expect((await vse("validate", "--colour", "x")).stderr).toContain("unknown option --colour");
    expect(await vse()).toMatchObject({ code: 2, stderr: expect.stringContaining("usage:") });
    expect(await vse("--help")).toMatchObject({ code: 0, stdout: expect.stringContaining("vse plan --base") });
  });
});

describe("vse render", () => {
  test("prints the effective definitions and every VM's config", async () => {
    const policy = "apiVersion: vse.dev/v1\nkind: SitePolicy\nmetadata: { name: site }\nspec:\n  defaults:\n    profile: { memory: 1GiB }\n";
    writeFiles(dir, { ...VALID, "defs/policy.yaml": policy });
    const r = await vse("render", "defs", "--cache-dir", cache);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const [effective, ...configs] = r.stdout.split(/^(?=# c1-)/m);
    const docs = parseAllDocuments(effective).map((d) => d.toJS());
    expect(docs.map((d) => d.kind)).toEqual(["Environment", "VmProfile", "VirtualCluster"]);
    // The policy default is part of the effective definition; schema defaults are written out.
    expect(docs[1].spec).toEqual({ hypervisor: "qemu", memory: "1024MiB", vcpus: 1, machine: "pc", accel: "tcg" });
    expect(docs[2].spec).toMatchObject({ nodes: 2, allocation: { manager: "local", hosts: 1 } });
    expect(configs).toHaveLength(2);
    expect(configs[0]).toMatch(/^# c1-0: rendered qemu config \(accel tcg\)\n/);
    expect(configs[0]).toMatch(/1024M/);
    expect(configs[1]).toContain("c1-1");
  });

  test("--out writes effective.yaml and one config per VM; effective.yaml is itself valid and equivalent", async () => {
    const cluster = CLUSTER + "  overrides:\n    - { vm: 1, memory: 512MiB }\n";
    writeFiles(dir, { ...VALID, "defs/cluster.yaml": cluster });
    const r = await vse("render", "defs", "--out", "out", "--cache-dir", cache);
    expect(r.code).toBe(0);
    expect(r.stdout.split("\n").filter(Boolean)).toEqual(["wrote out/effective.yaml", "wrote out/c1/c1-0.qemu.conf", "wrote out/c1/c1-1.qemu.conf"]);
    const plans = await planClusters([path.join(dir, "defs")], cache);
    expect(fs.readFileSync(path.join(dir, "out/c1/c1-1.qemu.conf"), "utf8")).toBe(plans[0].vms[1].config);
    expect((await vse("validate", "out/effective.yaml")).code).toBe(0);
    expect(resolveClusters(loadDefinitions([path.join(dir, "out/effective.yaml")]))).toEqual(resolveClusters(loadDefinitions([path.join(dir, "defs")])));
  });

  test("--hypervisor renders every profile for another hypervisor, validated like the field", async () => {
    writeFiles(dir, VALID);
    const r = await vse("render", "defs", "--hypervisor", "libvirt", "--out", "out", "--cache-dir", cache);
    expect(r.stderr).toBe("");
    expect(r.stdout).toContain("wrote out/c1/c1-0.libvirt.conf");
    expect(fs.readFileSync(path.join(dir, "out/c1/c1-0.libvirt.conf"), "utf8")).toMatch(/<domain[\s>]/);
    expect(fs.readFileSync(path.join(dir, "out/effective.yaml"), "utf8")).toContain("hypervisor: libvirt");
    const bad = await vse("render", "defs", "--hypervisor", "hyperv", "--cache-dir", cache);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^--hypervisor:1:1: spec\.hypervisor: expected one of "qemu", .*found "hyperv"$/m);
    // The site policy still applies to the overridden field.
    writeFiles(dir, { "defs/policy.yaml": "apiVersion: vse.dev/v1\nkind: SitePolicy\nmetadata: { name: site }\nspec:\n  allowedHypervisors: [qemu]\n" });
    const denied = await vse("render", "defs", "--hypervisor", "xen", "--cache-dir", cache);
    expect(denied.code).toBe(1);
    expect(denied.stderr).toContain('hypervisor "xen"; site policy "site" rule spec.allowedHypervisors at defs/policy.yaml:5:3 allows only "qemu"');
    expect((await vse("validate", "defs", "--hypervisor", "xen")).stderr).toContain("--hypervisor does not apply to vse validate");
  });

  test("invalid definitions exit 1 without rendering", async () => {
    writeFiles(dir, { ...VALID, "defs/cluster.yaml": CLUSTER.replace("nodes: 2", "nodes: 0") });
    const r = await vse("render", "defs", "--cache-dir", cache);
    expect(r).toMatchObject({ code: 1, stdout: "" });
    expect(r.stderr).toContain("defs/cluster.yaml:7:3: spec.nodes: expected a number >= 1, found 0");
  });
});

describe("unifiedDiff", () => {
  test("hunks with three lines of context and line ranges", () => {
    const a = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"].join("\n") + "\n";
    const b = a.replace("2\n", "two\n").replace("11\n", "");
    expect(unifiedDiff(a, b, "a/x", "b/x")).toBe(
      ["--- a/x", "+++ b/x", "@@ -1,5 +1,5 @@", " 1", "-2", "+two", " 3", " 4", " 5", "@@ -8,5 +8,4 @@", " 8", " 9", " 10", "-11", " 12", ""].join("\n"),
    );
    expect(unifiedDiff(a, a, "a/x", "b/x")).toBe("");
    expect(unifiedDiff("", "x\ny\n", "/dev/null", "b/x")).toBe("--- /dev/null\n+++ b/x\n@@ -0,0 +1,2 @@\n+x\n+y\n");
  });
});

describe("vse plan against a git ref", () => {
  const git = (...args: string[]) => execa.sync("git", ["-c", "user.name=vse test", "-c", "user.email=vse@test.invalid", ...args], { cwd: dir });
  const commit = (msg: string) => {
    git("add", "-A");
    git("commit", "-q", "-m", msg);
  };
  const C2 = CLUSTER.replace("c1", "c2").replace("nodes: 2", "nodes: 1");

  beforeEach(() => {
    git("init", "-q", "-b", "main");
    fs.writeFileSync(path.join(dir, ".gitignore"), ".cache/\n");
    // A definitions repository is a Pulumi project too: its project and stack files are not definitions.
    writeFiles(dir, { "Pulumi.yaml": "name: defs\nruntime: nodejs\n", "Pulumi.dev.yaml": "config: {}\n" });
    writeFiles(dir, { ...VALID, "defs/c2.yaml": C2 });
    commit("base");
  });

  test("per VM: restart, create, delete, with diffs of the rendered configs (two commits)", async () => {
    writeFiles(dir, {
      "defs/profile.yaml": PROFILE + "  memory: 512MiB\n",
      "defs/cluster.yaml": CLUSTER.replace("nodes: 2", "nodes: 3"),
    });
    fs.rmSync(path.join(dir, "defs/c2.yaml"));
    commit("change");
    const r = await vse("plan", "--base", "HEAD~1", "defs", "--format", "json", "--cache-dir", cache);
    expect(r.stderr).toBe("");
    const rows = JSON.parse(r.stdout) as { vm: string; action: string; changed: string[]; diff: string }[];
    expect(rows.map((x) => [x.vm, x.action])).toEqual([
      ["c1-0", "restart"],
      ["c1-1", "restart"],
      ["c1-2", "create"],
      ["c2-0", "delete"],
    ]);
    expect(rows[0].changed).toEqual(["memoryMiB", "config"]);
    expect(rows[0].diff).toMatch(/^--- a\/c1-0\.qemu\.conf\n\+\+\+ b\/c1-0\.qemu\.conf\n@@ /);
    expect(rows[0].diff).toMatch(/^-.*256M/m);
    expect(rows[0].diff).toMatch(/^\+.*512M/m);
    expect(rows[2].diff).toMatch(/^--- \/dev\/null\n\+\+\+ b\/c1-2\.qemu\.conf/);
    expect(rows[3].diff).toMatch(/^--- a\/c2-0\.qemu\.conf\n\+\+\+ \/dev\/null/);
  });

  test("markdown output is a PR comment: summary, table and collapsible diffs", async () => {
    writeFiles(dir, { "defs/cluster.yaml": CLUSTER + "  overrides:\n    - { vm: 1, vcpus: 2 }\n" });
    const r = await vse("plan", "--base", "main", "--format", "markdown", "--cache-dir", cache);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("### vse plan: `main` → this branch");
    expect(r.stdout).toContain("**1 to restart, 2 to leave unchanged**");
    expect(r.stdout).toContain("| `c1-1` | `c1` | **restart** | `vcpus`, `config` |");
    expect(r.stdout).not.toContain("| `c1-0`");
    expect(r.stdout).toMatch(/^-+-smp 1\n\+-smp 2$/m);
    expect(r.stdout).toContain("<details><summary><code>c1-1</code>: restart — rendered config</summary>\n\n```diff\n--- a/c1-1.qemu.conf");
    expect(r.stdout).not.toContain("<code>c1-0</code>");
  });

  test("job changes replace, timeouts update in place, host changes replace; text output", async () => {
    const env = ENV.replace("echo 5", "echo 6");
    writeFiles(dir, {
      "defs/env.yaml": env,
      "defs/c2.yaml": C2.replace("sum", "sum2"),
      "defs/env2.yaml": ENV.replace("name: sum", "name: sum2") + "    timeoutSeconds: 60\n",
    });
    let r = await vse("plan", "--base", "HEAD", "defs", "--cache-dir", cache);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^ {2}c1-0 {2}replace +\(imageId, config, markers\)$/m);
    expect(r.stdout).toMatch(/^ {2}c2-0 {2}update in place {2}\(jobTimeoutSeconds\)$/m);
    expect(r.stdout).toContain("1 to update in place, 2 to replace");
    git("checkout", "-q", "--", ".");
    fs.rmSync(path.join(dir, "defs/env2.yaml"));
    writeFiles(dir, { "defs/cluster.yaml": CLUSTER + "  allocation: { hosts: 2 }\n" });
    r = await vse("plan", "--base", "HEAD", "defs", "--format", "json", "--cache-dir", cache);
    const rows = JSON.parse(r.stdout) as { vm: string; action: string; changed: string[] }[];
    // Another host count replaces the VirtualCluster, hence its agents and token, hence its VMs.
    expect(rows.find((x) => x.vm === "c1-0")).toMatchObject({ action: "replace", changed: ["agentUrl", "token"] });
    expect(rows.find((x) => x.vm === "c1-1")).toMatchObject({ action: "replace", changed: ["host", "agentUrl", "token"] });
    expect(rows.find((x) => x.vm === "c2-0")).toMatchObject({ action: "no change", changed: [] });
  });

  test("agrees with the provider's diff on the same inputs", async () => {
    const basePlans = await planClusters([path.join(dir, "defs")], cache);
    writeFiles(dir, { "defs/cluster.yaml": CLUSTER + "  allocation: { hosts: 2 }\n", "defs/profile.yaml": PROFILE + "  memory: 300MiB\n" });
    const headPlans = await planClusters([path.join(dir, "defs")], cache);
    const rows = JSON.parse((await vse("plan", "--base", "HEAD", "defs", "--format", "json", "--cache-dir", cache)).stdout) as { vm: string; action: string }[];
    for (const [i, c] of headPlans.entries()) {
      for (const [k, p] of c.vms.entries()) {
        const o = basePlans[i].vms[k];
        const olds = { ...vmInputs(basePlans[i].model, o, offlineAgentInputs(basePlans[i].model, o)), status: "running" } as unknown as VirtualMachineOutputs;
        // A cluster whose allocation changes is replaced, so the engine hands its VMs' diffs an agent URL and token not known yet.
        const replacedCluster = JSON.stringify(basePlans[i].model.allocation) !== JSON.stringify(c.model.allocation);
        const unknown = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";
        const news = vmInputs(
          c.model,
          p,
          replacedCluster ? { agentUrl: unknown, token: unknown, agentCa: unknown, allocationRef: unknown } : offlineAgentInputs(c.model, p),
        );
        const d = await vmDiff(olds, news);
        const action = rows.find((x) => x.vm === p.vm.name)!.action;
        // The provider's diff tells replace from update (restart and in-place are both updates to Pulumi).
        expect({ replace: action === "replace", changes: action !== "no change" }).toEqual({ replace: d.replaces!.length > 0, changes: d.changes });
      }
    }
    expect(rows.map((x) => x.action)).toEqual(["replace", "replace", "restart"]);
  });

  test("definitions new since the ref are all created; unknown refs and invalid base are errors", async () => {
    writeFiles(dir, {
      "more/env.yaml": ENV.replace("name: sum", "name: other"),
      "more/p.yaml": PROFILE,
      "more/c.yaml": CLUSTER.replace("c1", "c9").replace("sum", "other"),
    });
    let r = await vse("plan", "--base", "HEAD", "more", "--format", "json", "--cache-dir", cache);
    expect(r.code).toBe(0);
    expect((JSON.parse(r.stdout) as { action: string }[]).map((x) => x.action)).toEqual(["create", "create"]);
    // A file deleted since the ref: its VMs are deleted. A path that never existed is an error.
    fs.rmSync(path.join(dir, "defs/c2.yaml"));
    r = await vse("plan", "--base", "HEAD", "defs/c2.yaml", "defs/env.yaml", "defs/profile.yaml", "--format", "json", "--cache-dir", cache);
    expect((JSON.parse(r.stdout) as { vm: string; action: string }[]).map((x) => [x.vm, x.action])).toEqual([["c2-0", "delete"]]);
    r = await vse("plan", "--base", "HEAD", "defs/nope.yaml", "--cache-dir", cache);
    expect(r).toMatchObject({ code: 1, stderr: "defs/nope.yaml:1:1: no such file or directory\n" });
    git("checkout", "-q", "--", "defs/c2.yaml");
    r = await vse("plan", "--base", "no-such-ref", "defs", "--cache-dir", cache);
    expect(r).toMatchObject({ code: 2, stderr: 'vse: unknown git ref "no-such-ref"\n' });
    expect((await vse("plan", "defs")).stderr).toContain("plan needs --base <git-ref>");
    writeFiles(dir, { "defs/profile.yaml": PROFILE + "  vcpus: 0\n" });
    commit("broken");
    writeFiles(dir, { "defs/profile.yaml": PROFILE });
    r = await vse("plan", "--base", "HEAD", "defs", "--cache-dir", cache);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("the definitions at HEAD are invalid");
    expect(r.stderr).toContain("HEAD:defs/profile.yaml:6:3: spec.vcpus: expected a number >= 1, found 0");
  });
});
