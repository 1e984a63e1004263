import { execFileSync, spawnSync } from "child_process";
import * as fs from "fs";
import * as path from "path";
import { refuseUnderCI, regenerateAllowed, underCI } from "./regenerate";

const ROOT = path.resolve(__dirname, "..", "..");

describe("regenerate switches (UPDATE_GOLDEN=1, UPDATE_DOCS=1, gen-types) never run under CI", () => {
  test('outside CI, only "1" asks to regenerate', () => {
    expect(regenerateAllowed("UPDATE_GOLDEN", {})).toBe(false);
    expect(regenerateAllowed("UPDATE_GOLDEN", { UPDATE_GOLDEN: "1" })).toBe(true);
    expect(regenerateAllowed("UPDATE_GOLDEN", { UPDATE_GOLDEN: "1", CI: "false" })).toBe(true);
    expect(regenerateAllowed("UPDATE_GOLDEN", { UPDATE_GOLDEN: "0" })).toBe(false);
    expect(regenerateAllowed("UPDATE_DOCS", { UPDATE_GOLDEN: "1" })).toBe(false);
  });

  test.each(["true", "1", "TRUE"])("under CI=%s a set switch throws, naming the switch and CI", (ci) => {
    expect(underCI({ CI: ci })).toBe(true);
    expect(() => regenerateAllowed("UPDATE_GOLDEN", { UPDATE_GOLDEN: "1", CI: ci })).toThrow(
      new RegExp(`^UPDATE_GOLDEN=1 rewrites checked-in files that CI checks, and CI=${ci} is set: refused`),
    );
    // Set to anything, the switch is a mistake in CI: refused rather than silently ignored.
    expect(() => regenerateAllowed("UPDATE_DOCS", { UPDATE_DOCS: "yes", CI: ci })).toThrow(/UPDATE_DOCS=yes .* refused/);
    expect(() => refuseUnderCI("gen", { CI: ci })).toThrow(/^gen rewrites checked-in files/);
  });

  test("under CI an unset switch is simply off", () => {
    expect(regenerateAllowed("UPDATE_GOLDEN", { CI: "true" })).toBe(false);
    expect(regenerateAllowed("UPDATE_GOLDEN", { CI: "true", UPDATE_GOLDEN: "" })).toBe(false);
    expect(() => refuseUnderCI("gen", {})).not.toThrow();
    expect(() => refuseUnderCI("gen", { CI: "0" })).not.toThrow();
  });

  test("the helper reads process.env by default (a child node with CI=true and UPDATE_GOLDEN=1)", () => {
    const r = spawnSync(process.execPath, ["-e", `require(${JSON.stringify(path.join(__dirname, "regenerate.js"))}).regenerateAllowed("UPDATE_GOLDEN")`], {
      env: { ...process.env, CI: "true", UPDATE_GOLDEN: "1" },
      encoding: "utf8",
    });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("UPDATE_GOLDEN=1 rewrites checked-in files that CI checks, and CI=true is set: refused");
  });

  test("scripts/gen-types.js refuses to write under CI=true, and --check still runs", () => {
    const out = path.join(ROOT, "provider", "model", "types.generated.ts");
    const before = fs.statSync(out).mtimeMs;
    const r = spawnSync(process.execPath, [path.join(ROOT, "scripts", "gen-types.js")], { env: { ...process.env, CI: "true" }, encoding: "utf8" });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("scripts/gen-types.js (without --check) rewrites checked-in files that CI checks, and CI=true is set: refused");
    expect(fs.statSync(out).mtimeMs).toBe(before);
    // --check only reads: allowed under CI (throws if the generated file is out of date).
    execFileSync(process.execPath, [path.join(ROOT, "scripts", "gen-types.js"), "--check"], { env: { ...process.env, CI: "true" }, stdio: "pipe" });
  });
});
