// The counting loop some test guests leave behind ("tick N" a second on the
// console): how far a guest has counted, to tell a live-migrated guest that
// carries on from one that booted again.
import * as fs from "fs";

/** The tick numbers the console file holds so far, in order (none while it does not exist). */
export function ticks(file: string): number[] {
  const text = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : "";
  return [...text.matchAll(/^tick (\d+)\r?$/gm)].map((m) => Number(m[1]));
}

/** Waits (up to 2 minutes) until the console file holds at least atLeast ticks; returns them. */
export async function waitForTicks(file: string, atLeast: number): Promise<number[]> {
  for (let i = 0; i < 1200; i++) {
    const tk = ticks(file);
    if (tk.length >= atLeast) return tk;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`fewer than ${atLeast} ticks in ${file}: ${fs.existsSync(file) ? fs.readFileSync(file, "utf8").slice(-500) : "(missing)"}`);
}
