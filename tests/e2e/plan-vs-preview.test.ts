// `vse plan` (offline, from git) and `pulumi preview` (the real engine) must
// say the same thing about each VM for the same change.
import * as fs from "fs";
import * as path from "path";
import type { EngineEvent } from "@pulumi/pulumi/automation";
import { main as vse, PlanAction, VmPlanRow } from "../../provider/cli/vse";
import { createTestStack, exampleDefinitions, TestStack, upAndCheckNoDiff } from "../support/stack";

jest.setTimeout(10 * 60 * 1000);

const execa = require("execa") as typeof import("execa");

const ENGINE_OP: Record<PlanAction, string> = {
  create: "create",
  "update in place": "update",
  restart: "update",
  migrate: "update",
  replace: "replace",
  delete: "delete",
  "no change": "same",
};

let t: TestStack;

async function git(...args: string[]): Promise<void> {
  await execa("git", ["-c", "user.email=test@vse.dev", "-c", "user.name=test", ...args], { cwd: t.defsDir });
}

async function vsePlan(): Promise<Record<string, PlanAction>> {
  let out = "";
  const code = await vse(["plan", "--base", "HEAD", "--format", "json", "."], { cwd: t.defsDir, stdout: (s) => (out += s), stderr: (s) => (out += s) });
  expect(code).toBe(0);
  return Object.fromEntries((JSON.parse(out) as VmPlanRow[]).map((r) => [r.vm, r.action]));
}

/** The engine's step per VM; a replace shows as several steps (delete-replaced, replace, create-replacement). */
async function previewOps(): Promise<Record<string, string>> {
  const ops: Record<string, string[]> = {};
  await t.stack.preview({
    onEvent: (e: EngineEvent) => {
      const m = e.resourcePreEvent?.metadata;
      if (m && m.type === "pulumi-nodejs:dynamic/vse:VirtualMachine") (ops[m.urn.split("::").pop()!] ??= []).push(m.op);
    },
  });
  // A VM removed from the program while its cluster is replaced is deleted as a dependent ("delete-replaced"), not recreated.
  const op = (o: string[]) => (o.includes("replace") ? "replace" : o.includes("delete") || o.includes("delete-replaced") ? "delete" : o[0]);
  return Object.fromEntries(Object.entries(ops).map(([vm, o]) => [vm, op(o)]));
}

beforeAll(async () => {
  t = await createTestStack({ "cluster.yaml": exampleDefinitions() });
  await git("init", "-q");
  await git("add", ".");
  await git("commit", "-qm", "base");
  await upAndCheckNoDiff(t.stack);
});

afterAll(async () => {
  if (t) await t.cleanup();
});

function expectAgreement(plan: Record<string, PlanAction>, preview: Record<string, string>): void {
  expect(Object.keys(preview).sort()).toEqual(Object.keys(plan).sort());
  for (const [vm, action] of Object.entries(plan)) expect({ vm, op: preview[vm] }).toEqual({ vm, op: ENGINE_OP[action] });
}

test("a memory override and a new node: restart, create and no change agree", async () => {
  const file = path.join(t.defsDir, "cluster.yaml");
  fs.writeFileSync(file, exampleDefinitions().replace("nodes: 2", "nodes: 3\n  overrides:\n    - vm: 1\n      memory: 384MiB"));
  const plan = await vsePlan();
  expect(plan).toEqual({ "local-cluster-0": "no change", "local-cluster-1": "restart", "local-cluster-2": "create" });
  expectAgreement(plan, await previewOps());
});

test("a job change replaces every VM in both", async () => {
  const file = path.join(t.defsDir, "cluster.yaml");
  fs.writeFileSync(file, exampleDefinitions().replace("echo $((2+3))", "echo $((3+4))").replace("timeoutSeconds: 120", "timeoutSeconds: 90"));
  const plan = await vsePlan();
  expect(plan).toEqual({ "local-cluster-0": "replace", "local-cluster-1": "replace" });
  expectAgreement(plan, await previewOps());
});

test("fewer hosts and nodes: the cluster is replaced, so its remaining VM is replaced and the removed one deleted, in both", async () => {
  const file = path.join(t.defsDir, "cluster.yaml");
  fs.writeFileSync(
    file,
    exampleDefinitions()
      .replace("timeoutSeconds: 120", "timeoutSeconds: 90")
      .replace("nodes: 2", "nodes: 1\n  allocation: { manager: local, hosts: 1 }")
      .replace("  allocation: { manager: local, hosts: 2 }\n", ""),
  );
  const plan = await vsePlan();
  expect(plan["local-cluster-1"]).toBe("delete");
  expectAgreement(plan, await previewOps());
});

test("switching only the profile's hypervisor replaces exactly the VMs of that profile, in both", async () => {
  const file = path.join(t.defsDir, "cluster.yaml");
  fs.writeFileSync(file, exampleDefinitions().replace("hypervisor: qemu", "hypervisor: libvirt"));
  const plan = await vsePlan();
  expect(plan).toEqual({ "local-cluster-0": "replace", "local-cluster-1": "replace" });
  expectAgreement(plan, await previewOps());
  // Nothing else is replaced: the environment and the cluster stay, the profile record is updated in place.
  const others: Record<string, string> = {};
  await t.stack.preview({
    onEvent: (e: EngineEvent) => {
      const m = e.resourcePreEvent?.metadata;
      if (m && m.type !== "pulumi-nodejs:dynamic/vse:VirtualMachine") others[m.urn.split("::").pop()!] = m.op;
    },
  });
  expect(others).toEqual(expect.objectContaining({ "busybox-sum": "same", "local-cluster": "same", "compute-small": "update" }));
});
