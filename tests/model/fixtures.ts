import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { DefinitionError, DefinitionProblem } from "../../provider/model/errors";

/** A fresh temporary directory, removed by the returned cleanup. */
export function tempDir(prefix = "vse-test-"): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Writes files (relative path → text) under dir and returns their absolute paths. */
export function writeFiles(dir: string, files: Record<string, string>): string[] {
  return Object.entries(files).map(([rel, text]) => {
    const p = path.join(dir, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, text);
    return p;
  });
}

/** Runs fn, which must throw a DefinitionError, and returns its problems. */
export function problemsOf(fn: () => unknown): DefinitionProblem[] {
  try {
    fn();
  } catch (err) {
    if (err instanceof DefinitionError) return err.problems;
    throw err;
  }
  throw new Error("expected a DefinitionError, but nothing was thrown");
}

/** 1-based line and column of the first occurrence of needle in text. */
export function locate(text: string, needle: string): { line: number; column: number } {
  const i = text.indexOf(needle);
  if (i < 0) throw new Error(`"${needle}" not in text`);
  const before = text.slice(0, i).split("\n");
  return { line: before.length, column: before[before.length - 1].length + 1 };
}

export const ENV = `apiVersion: vse.dev/v1
kind: Environment
metadata: { name: sum }
spec:
  job:
    command: ["/bin/sh", "-c", "echo 5"]
`;

export const PROFILE = `apiVersion: vse.dev/v1
kind: VmProfile
metadata: { name: compute-small }
spec:
  accel: tcg
`;

export const CLUSTER = `apiVersion: vse.dev/v1
kind: VirtualCluster
metadata: { name: c1 }
spec:
  environment: sum
  profile: compute-small
  nodes: 2
`;
