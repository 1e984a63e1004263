import * as fs from "fs";
import * as path from "path";
import { loadDefinitions } from "../../provider/model/load";
import { globToRegExp } from "../../provider/model/policy";
import { resolveClusters } from "../../provider/model/resolve";
import { planClusters } from "../../provider/program/plan";
import { CLUSTER, ENV, locate, problemsOf, PROFILE, tempDir, writeFiles } from "./fixtures";

let dir: string;
beforeEach(() => {
  dir = tempDir("vse-policy-");
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

function policy(spec: string): string {
  return `apiVersion: vse.dev/v1\nkind: SitePolicy\nmetadata: { name: site }\nspec:\n${spec}`;
}

function resolve(files: Record<string, string>, kernel?: string) {
  writeFiles(dir, files);
  return resolveClusters(loadDefinitions([dir]), kernel ? { kernelRelease: () => kernel } : {});
}

/** Asserts exactly one problem, at needle in file (both locations: the offending field and the rule). */
function expectViolation(files: Record<string, string>, file: string, needle: string, rule: string, ruleNeedle: string, kernel?: string) {
  const problems = problemsOf(() => resolve(files, kernel));
  expect(problems).toHaveLength(1);
  const p = problems[0];
  expect(p.file).toBe(path.join(dir, file));
  expect({ line: p.line, column: p.column }).toEqual(locate(files[file], needle));
  const r = locate(files["policy.yaml"], ruleNeedle);
  expect(p.message).toContain(`rule ${rule} at ${path.join(dir, "policy.yaml")}:${r.line}:${r.column}`);
  return p;
}

describe("site policy defaults", () => {
  test("fill only the fields users left unset, before the schema defaults", () => {
    const files = {
      "env.yaml": ENV,
      "profile.yaml": PROFILE,
      "big.yaml": PROFILE.replace("compute-small", "big").replace("accel: tcg", "accel: tcg\n  memory: 1GiB"),
      "cluster.yaml": CLUSTER,
      "c2.yaml": CLUSTER.replace("c1", "c2").replace("compute-small", "big").replace("  nodes: 2\n", ""),
      "policy.yaml": policy(
        "  defaults:\n    profile: { memory: 512MiB, vcpus: 2 }\n    environment: { timeoutSeconds: 60, kernelArgs: [mitigations=off] }\n    cluster: { nodes: 3 }\n",
      ),
    };
    const clusters = resolve(files);
    const [c1, c2] = ["c1", "c2"].map((n) => clusters.find((c) => c.name === n)!);
    expect(c1.profile).toMatchObject({ memoryMiB: 512, vcpus: 2, accel: "tcg" });
    expect(c1.vms).toHaveLength(2);
    expect(c1.environment.job.timeoutSeconds).toBe(60);
    expect(c1.environment.kernelArgs).toEqual(["mitigations=off"]);
    expect(c2.profile).toMatchObject({ memoryMiB: 1024, vcpus: 2 });
    expect(c2.vms).toHaveLength(3);
  });

  test("without a policy, schema defaults apply unchanged", () => {
    const [c1] = resolve({ "env.yaml": ENV, "profile.yaml": PROFILE, "cluster.yaml": CLUSTER });
    expect(c1.profile).toMatchObject({ memoryMiB: 256, vcpus: 1 });
    expect(c1.environment.job.timeoutSeconds).toBe(300);
  });

  test("a default that breaks the policy's own limit is reported at the default", () => {
    const files = { "env.yaml": ENV, "policy.yaml": policy("  defaults:\n    profile: { memory: 8GiB }\n  limits:\n    maxMemory: 4GiB\n") };
    const problems = problemsOf(() => resolve(files));
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatchObject({ field: "spec.defaults.profile.memory", ...locate(files["policy.yaml"], "memory: 8GiB") });
    expect(problems[0].message).toContain("exceeds this policy's limits.maxMemory of 4096 MiB");
  });
});

describe("site policy limits", () => {
  const base = { "env.yaml": ENV, "cluster.yaml": CLUSTER };

  test("memory above the limit names the profile field and the rule", () => {
    const files = { ...base, "profile.yaml": PROFILE + "  memory: 8GiB\n", "policy.yaml": policy("  limits:\n    maxMemory: 4GiB\n") };
    const p = expectViolation(files, "profile.yaml", "memory: 8GiB", "spec.limits.maxMemory", "maxMemory");
    expect(p.field).toBe("spec.memory");
    expect(p.message).toContain("8192 MiB");
    expect(p.message).toContain("at most 4096 MiB");
  });

  test("a per-VM override above the limit points at the override", () => {
    const cluster = CLUSTER + "  overrides:\n    - { vm: 1, memory: 2GiB, vcpus: 4 }\n";
    const files = { ...base, "cluster.yaml": cluster, "profile.yaml": PROFILE, "policy.yaml": policy("  limits:\n    maxMemory: 1GiB\n") };
    const p = expectViolation(files, "cluster.yaml", "memory: 2GiB", "spec.limits.maxMemory", "maxMemory");
    expect(p.field).toBe("spec.overrides.0.memory");
    expect(p.message).toContain('VM "c1-1"');
  });

  test("vCPUs above the limit", () => {
    const files = { ...base, "profile.yaml": PROFILE + "  vcpus: 16\n", "policy.yaml": policy("  limits: { maxVcpus: 8 }\n") };
    expect(expectViolation(files, "profile.yaml", "vcpus: 16", "spec.limits.maxVcpus", "maxVcpus").field).toBe("spec.vcpus");
  });

  test("a value filled by a policy default is reported with the default's location", () => {
    const pol = policy("  defaults:\n    environment: { kernelArgs: [init=/bin/sh] }\n  forbiddenKernelArgs: [init=*]\n");
    const files = { ...base, "profile.yaml": PROFILE, "policy.yaml": pol };
    const problems = problemsOf(() => resolve(files));
    expect(problems).toHaveLength(1);
    const d = locate(pol, "kernelArgs");
    expect(problems[0].message).toContain(
      `set by policy default spec.defaults.environment.kernelArgs at ${path.join(dir, "policy.yaml")}:${d.line}:${d.column}`,
    );
    expect(problems[0].file).toBe(path.join(dir, "env.yaml"));
  });

  test("too many nodes per cluster", () => {
    const files = { ...base, "profile.yaml": PROFILE, "policy.yaml": policy("  limits:\n    maxNodesPerCluster: 1\n") };
    const p = expectViolation(files, "cluster.yaml", "nodes: 2", "spec.limits.maxNodesPerCluster", "maxNodesPerCluster");
    expect(p.field).toBe("spec.nodes");
    expect(p.message).toContain("at most 1 nodes per cluster");
  });

  test("a hypervisor outside the allow-list", () => {
    const files = { ...base, "profile.yaml": PROFILE + "  hypervisor: qemu\n", "policy.yaml": policy("  allowedHypervisors: [xen]\n") };
    const p = expectViolation(files, "profile.yaml", "hypervisor: qemu", "spec.allowedHypervisors", "allowedHypervisors");
    expect(p.message).toContain('hypervisor "qemu"');
  });

  test("a base outside the allowed package sources", () => {
    const files = { ...base, "env.yaml": ENV + "  base: busybox\n", "profile.yaml": PROFILE, "policy.yaml": policy('  allowedBases: ["debian:*"]\n') };
    const p = expectViolation(files, "env.yaml", "base: busybox", "spec.allowedBases", "allowedBases");
    expect(p.message).toContain('"debian:*"');
  });

  test("a Debian mirror outside the allowed package sources", () => {
    const env = ENV.replace("spec:\n", "spec:\n  base: debian\n  debian:\n    packages: [bc]\n    mirror: http://mirror.example.org/debian\n");
    const files = { ...base, "env.yaml": env, "profile.yaml": PROFILE, "policy.yaml": policy('  allowedMirrors: ["http://deb.debian.org/*"]\n') };
    const p = expectViolation(files, "env.yaml", "mirror: http", "spec.allowedMirrors", "allowedMirrors");
    expect(p.field).toBe("spec.debian.mirror");
    expect(p.message).toContain('mirror "http://mirror.example.org/debian"');
  });

  test("a forbidden kernel parameter names the matching pattern", () => {
    const env = ENV + "  kernelArgs: [quiet, init=/bin/sh]\n";
    const files = { ...base, "env.yaml": env, "profile.yaml": PROFILE, "policy.yaml": policy('  forbiddenKernelArgs: ["nokaslr", "init=*"]\n') };
    const p = expectViolation(files, "env.yaml", "init=/bin/sh", "spec.forbiddenKernelArgs.1", '"init=*"');
    expect(p.field).toBe("spec.kernelArgs.1");
  });

  test("a kernel outside the allow-list, when the kernel is known", () => {
    const files = { ...base, "profile.yaml": PROFILE, "policy.yaml": policy('  allowedKernels: ["6.1.*-amd64"]\n') };
    expect(resolve(files, "6.1.0-56-amd64")).toHaveLength(1);
    fs.rmSync(dir, { recursive: true, force: true });
    const p = expectViolation(files, "env.yaml", "spec:", "spec.allowedKernels", "allowedKernels", "5.10.0-9-amd64");
    expect(p.message).toContain("boots kernel 5.10.0-9-amd64");
  });

  test("every violation is reported, not only the first", () => {
    const files = {
      ...base,
      "profile.yaml": PROFILE + "  memory: 2GiB\n  vcpus: 8\n",
      "policy.yaml": policy("  limits: { maxMemory: 1GiB, maxVcpus: 2, maxNodesPerCluster: 1 }\n"),
    };
    expect(
      problemsOf(() => resolve(files))
        .map((p) => p.field)
        .sort(),
    ).toEqual(["spec.memory", "spec.nodes", "spec.vcpus"]);
  });

  test("violations are reported together with other clusters' reference errors", () => {
    const files = {
      ...base,
      "c2.yaml": CLUSTER.replace("c1", "c2").replace("profile: compute-small", "profile: compute-smal"),
      "profile.yaml": PROFILE + "  vcpus: 8\n",
      "policy.yaml": policy("  limits: { maxVcpus: 2 }\n"),
    };
    const problems = problemsOf(() => resolve(files));
    expect(problems.map((p) => [path.basename(p.file), p.field])).toEqual([
      ["c2.yaml", "spec.profile"],
      ["profile.yaml", "spec.vcpus"],
    ]);
  });

  test("only one SitePolicy may apply", () => {
    const files = {
      ...base,
      "profile.yaml": PROFILE,
      "policy.yaml": policy("  limits: { maxVcpus: 2 }\n"),
      "z.yaml": policy("  {}\n").replace("site", "other"),
    };
    const problems = problemsOf(() => resolve(files));
    expect(problems).toHaveLength(1);
    expect(problems[0].file).toBe(path.join(dir, "z.yaml"));
    expect(problems[0].message).toContain('only one SitePolicy may apply; "site" is already defined');
  });

  test("glob patterns are anchored and escape regex characters", () => {
    expect(globToRegExp("init=*").test("init=/bin/sh")).toBe(true);
    expect(globToRegExp("init=*").test("xinit=1")).toBe(false);
    expect(globToRegExp("a.b?").test("a.bc")).toBe(true);
    expect(globToRegExp("a.b?").test("axbc")).toBe(false);
  });
});

describe("planClusters renders the effective definition", () => {
  test("policy defaults reach the rendered config", async () => {
    const files = {
      "env.yaml": ENV,
      "profile.yaml": PROFILE,
      "cluster.yaml": CLUSTER,
      "policy.yaml": policy("  defaults:\n    profile: { memory: 768MiB, vcpus: 3 }\n"),
    };
    writeFiles(dir, files);
    const plans = await planClusters([dir], path.join(dir, "cache"));
    expect(plans[0].vms[0].config).toMatch(/-m\s+768M/);
    expect(plans[0].vms[0].config).toMatch(/-smp\s+3/);
  });

  test("a violation stops the plan with a DefinitionError", async () => {
    writeFiles(dir, { "env.yaml": ENV, "profile.yaml": PROFILE, "cluster.yaml": CLUSTER, "policy.yaml": policy("  limits: { maxNodesPerCluster: 1 }\n") });
    await expect(planClusters([dir], path.join(dir, "cache"))).rejects.toThrow(/maxNodesPerCluster/);
  });
});
