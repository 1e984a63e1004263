import * as fs from "fs";
import * as path from "path";
import { DefinitionError, DefinitionProblem } from "../../provider/model/errors";
import { Definitions, loadDefinitions, loadText, MAX_FILE_BYTES } from "../../provider/model/load";
import { resolveClusters } from "../../provider/model/resolve";
import { ENV, PROFILE, tempDir } from "./fixtures";

const CORPUS = path.resolve(__dirname, "..", "bad-inputs");
const expected: Record<string, { line: number; column: number; message: string }> = JSON.parse(fs.readFileSync(path.join(CORPUS, "expected.json"), "utf8"));
// A fixed kernel release, so that allowedKernels cases do not depend on the host.
const KERNEL = "6.1.0-56-amd64";

/** Loads and resolves paths; returns the problems of the DefinitionError, or fails on anything else. */
function problemsFor(paths: string[]): DefinitionProblem[] {
  try {
    resolveClusters(loadDefinitions(paths), { kernelRelease: () => KERNEL });
  } catch (err) {
    if (err instanceof DefinitionError) return err.problems;
    throw new Error(`expected a DefinitionError, got ${(err as Error)?.stack ?? String(err)}`);
  }
  throw new Error("expected a DefinitionError, but the definitions were accepted");
}

function timed<T>(fn: () => T): { value: T; ms: number } {
  const t0 = process.hrtime.bigint();
  const value = fn();
  return { value, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
}

describe("the bad-inputs corpus", () => {
  const files = fs
    .readdirSync(CORPUS)
    .filter((f) => f.endsWith(".yaml"))
    .sort();

  test("holds at least 150 cases, each with an expectation", () => {
    expect(files.length).toBeGreaterThanOrEqual(150);
    expect(Object.keys(expected).sort()).toEqual(files);
  });

  test.each(files)("%s is rejected with its message at its location", (name) => {
    const file = path.join(CORPUS, name);
    const want = expected[name];
    const { value: problems, ms } = timed(() => problemsFor([file]));
    expect(ms).toBeLessThan(2000);
    expect(problems.length).toBeGreaterThan(0);
    for (const p of problems) {
      expect(p.file).toBe(file);
      expect(p.line).toBeGreaterThanOrEqual(1);
      expect(p.column).toBeGreaterThanOrEqual(1);
    }
    const found = problems.map((p) => ({ line: p.line, column: p.column, message: p.message }));
    expect(found).toContainEqual({ line: want.line, column: want.column, message: expect.stringContaining(want.message) });
  });
});

describe("resource exhaustion fails fast", () => {
  let dir: string;
  beforeAll(() => {
    dir = tempDir("vse-bad-");
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test("a file over 1 MiB is refused before it is parsed", () => {
    const file = path.join(dir, "huge.yaml");
    // Valid YAML, so only the size can reject it.
    fs.writeFileSync(file, ENV.replace("spec:", `  description: "${"x".repeat(999)}"\nspec:`) + `# ${"y".repeat(MAX_FILE_BYTES)}\n`);
    expect(fs.statSync(file).size).toBeGreaterThan(1024 * 1024);
    const { value: problems, ms } = timed(() => problemsFor([file]));
    expect(ms).toBeLessThan(2000);
    expect(problems).toEqual([{ file, line: 1, column: 1, field: "", message: expect.stringContaining(`definitions are limited to ${MAX_FILE_BYTES} bytes`) }]);
  });

  test("huge in-memory text is refused by loadText too", () => {
    const defs: Definitions = { environments: new Map(), profiles: new Map(), clusters: new Map() };
    const problems: DefinitionProblem[] = [];
    const text = Array.from({ length: 20000 }, (_, i) => PROFILE.replace("compute-small", `p${i}`)).join("---\n");
    expect(text.length).toBeGreaterThan(MAX_FILE_BYTES);
    const { ms } = timed(() => loadText(text, "mem.yaml", defs, problems));
    expect(ms).toBeLessThan(2000);
    expect(problems).toHaveLength(1);
    expect(problems[0].message).toContain("definitions are limited to");
    expect(defs.profiles.size).toBe(0);
  });

  test("just under the size cap, many documents load in bounded time", () => {
    const one = PROFILE.replace("compute-small", "p").length + 8;
    const n = Math.floor((MAX_FILE_BYTES - 1000) / one);
    const file = path.join(dir, "many.yaml");
    fs.writeFileSync(file, Array.from({ length: n }, (_, i) => PROFILE.replace("compute-small", `p${i}`)).join("---\n"));
    expect(fs.statSync(file).size).toBeLessThanOrEqual(MAX_FILE_BYTES);
    const { value: defs, ms } = timed(() => loadDefinitions([file]));
    expect(defs.profiles.size).toBe(n);
    expect(ms).toBeLessThan(30000);
  });

  test.each([
    [
      "billion laughs",
      (k: number) =>
        `a: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n${Array.from({ length: k }, (_, i) => `a${i + 1}: &a${i + 1} [${Array(10).fill(`*a${i}`).join(", ")}]`).join("\n")}\n`,
    ],
    ["deep flow sequences", (k: number) => "[".repeat(k * 10000) + "]".repeat(k * 10000)],
    ["deep flow mappings", (k: number) => "{a: ".repeat(k * 10000) + "1" + "}".repeat(k * 10000)],
    ["deep compact sequences", (k: number) => "- ".repeat(k * 10000) + "x\n"],
    ["unterminated brackets", (k: number) => "[".repeat(k * 50000)],
  ])("%s: rejected with a located error in < 2 s", (_name, make) => {
    const file = path.join(dir, "attack.yaml");
    fs.writeFileSync(file, make(9));
    const { value: problems, ms } = timed(() => problemsFor([file]));
    expect(ms).toBeLessThan(2000);
    expect(problems[0]).toMatchObject({ file, line: expect.any(Number), column: expect.any(Number) });
    expect(problems[0].message).toMatch(/alias|nested|cannot parse|invalid YAML/);
  });
});
