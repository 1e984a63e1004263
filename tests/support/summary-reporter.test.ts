import { spawnSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";

const ROOT = path.resolve(__dirname, "..", "..");
const REPORTER = path.join(__dirname, "summary-reporter.js");
const JEST = path.join(ROOT, "node_modules", "jest", "bin", "jest.js");

/** Runs a real jest, with this reporter, on the given test files; returns its stdout lines and exit status. */
function runJest(files: Record<string, string>): { lines: string[]; status: number | null; stderr: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-summary-"));
  try {
    for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
    // Plain JavaScript, no transform: the run takes a second or two.
    const config = {
      rootDir: dir,
      testEnvironment: "node",
      testMatch: ["<rootDir>/*.test.js"],
      transform: {},
      reporters: [REPORTER],
      cacheDirectory: path.join(dir, ".cache"),
    };
    fs.writeFileSync(path.join(dir, "jest.config.json"), JSON.stringify(config));
    const r = spawnSync(process.execPath, [JEST, "--config", path.join(dir, "jest.config.json"), "--runInBand", "--watchman=false"], {
      cwd: dir,
      encoding: "utf8",
      env: { ...process.env, CI: "true", FORCE_COLOR: "0" },
      timeout: 60000,
    });
    return { lines: r.stdout.split("\n").filter((l) => l !== ""), status: r.status, stderr: r.stderr };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** What CI reads: "N passed, N failed" alone on the last line. */
const CI_LINE = /^tests: (\d+) passed, (\d+) failed$/;

test("suites that fail outside their tests count as failed, and the last line keeps its exact form", () => {
  const { lines, status } = runJest({
    "fine.test.js": 'test("a", () => {});\ntest("b", () => {});\n',
    "after-all.test.js": 'test("passes", () => {});\nafterAll(() => {\n  throw new Error("afterAll broke");\n});\n',
    "syntax.test.js": 'test("never parsed", () => {\n  expect(1).toBe(1;\n});\n',
    "import-throws.test.js": 'throw new Error("broken at import");\n',
    "one-failing.test.js": 'test("fails", () => {\n  expect(1).toBe(2);\n});\ntest("passes", () => {});\n',
  });
  expect(status).toBe(1);
  const last = lines[lines.length - 1];
  expect(last).toMatch(CI_LINE);
  // 4 tests passed (fine: 2, after-all: 1, one-failing: 1); failed: 1 test + 3 suites that failed outside any test.
  expect(last).toBe("tests: 4 passed, 4 failed");
  expect(lines[lines.length - 2]).toBe("(3 suites failed outside their tests, counted as failed)");
  expect(lines.filter((l) => CI_LINE.test(l))).toHaveLength(1);
}, 60000);

test("a clean run prints only the plain line; skipped tests are said on the line before", () => {
  expect(runJest({ "fine.test.js": 'test("a", () => {});\n' }).lines.slice(-1)).toEqual(["tests: 1 passed, 0 failed"]);
  const { lines, status } = runJest({ "fine.test.js": 'test("a", () => {});\ntest.skip("s", () => {});\ntest.todo("t");\n' });
  expect(status).toBe(0);
  expect(lines.slice(-2)).toEqual(["(2 skipped)", "tests: 1 passed, 0 failed"]);
}, 60000);
