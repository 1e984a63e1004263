// Every allocation manager is one set of facts: its value in the schema's
// enum, its descriptor (allocation/managers.ts) and its allocator in the
// registry (allocation/allocator.ts). A manager missing from any of them, or
// left over in one, fails here; so does a descriptor table that starts to load
// code (the model layer reads it, and must not load allocators).
import * as fs from "fs";
import * as path from "path";
import { allocatorFor, REGISTERED_MANAGERS } from "../../provider/allocation/allocator";
import { MANAGERS, managerFacts } from "../../provider/allocation/managers";

const ROOT = path.join(__dirname, "..", "..");
const SCHEMA = JSON.parse(fs.readFileSync(path.join(ROOT, "schema", "virtualcluster.schema.json"), "utf8"));
const ENUM: string[] = SCHEMA.properties.spec.properties.allocation.properties.manager.enum;

test("the schema, the descriptors and the registry name the same managers, in the same order", () => {
  expect(ENUM.length).toBeGreaterThan(0);
  expect(Object.keys(MANAGERS)).toEqual(ENUM);
  expect(REGISTERED_MANAGERS).toEqual(ENUM);
});

test("every manager's allocator loads and has the interface's methods", () => {
  for (const m of ENUM) {
    const a = allocatorFor(m);
    const methods = (["allocate", "healthy", "restartAgent", "release"] as const).map((k) => typeof a[k]);
    expect({ m, methods }).toEqual({ m, methods: ["function", "function", "function", "function"] });
  }
});

test("a name that is no manager has no facts and no allocator, whatever Object carries", () => {
  for (const name of ["constructor", "toString", "__proto__", "hasOwnProperty", "pbs", "Local", ""]) {
    expect({ name, facts: managerFacts(name) }).toEqual({ name, facts: undefined });
    expect(() => allocatorFor(name)).toThrow(`allocation.manager: expected one of ${ENUM.join(", ")}, found ${JSON.stringify(name)}`);
  }
});

test("the descriptor table imports types only (no code of its own to load)", () => {
  const source = fs.readFileSync(path.join(ROOT, "provider", "allocation", "managers.ts"), "utf8");
  const imports = source.split("\n").filter((l) => /^\s*import\b/.test(l));
  expect(imports.filter((l) => !/^import type /.test(l))).toEqual([]);
  expect(source).not.toMatch(/\brequire\(/);
});

test("only managers of declared hosts can have hosts of their own (HTTPS agents with their own stores, watching each other)", () => {
  for (const [m, facts] of Object.entries(MANAGERS)) if (facts.ownHosts) expect({ m, hosts: facts.hosts }).toEqual({ m, hosts: "declared" });
  // The static manager is the one whose agents are bootstrapped as a tree on hosts of their own.
  expect(MANAGERS.static.ownHosts).toBe(true);
  expect(MANAGERS.ssh.ownHosts).toBe(false);
});
