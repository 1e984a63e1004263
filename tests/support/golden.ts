// Golden files under tests/golden/<dir>/: what a generator writes is compared
// byte for byte; UPDATE_GOLDEN=1 rewrites them (refused under CI, where the
// goldens are only checked).
import * as fs from "fs";
import * as path from "path";
import { regenerateAllowed } from "./regenerate";

const GOLDEN_ROOT = path.join(__dirname, "..", "golden");

/** A checker for the goldens of tests/golden/<dir>: golden(name, out) compares out with the file (or rewrites it). */
export function goldensIn(dir: string): (name: string, out: string) => void {
  const update = regenerateAllowed("UPDATE_GOLDEN");
  const root = path.join(GOLDEN_ROOT, dir);
  return (name, out) => {
    const file = path.join(root, name);
    if (update) {
      fs.mkdirSync(root, { recursive: true });
      fs.writeFileSync(file, out);
    }
    expect(out).toBe(fs.readFileSync(file, "utf8"));
  };
}
