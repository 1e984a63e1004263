// Memory sizes are normalised to whole MiB before comparing or rendering, so
// "1GiB", "1024MiB" and 1024 are the same value and never show as a diff.

const FACTORS: Record<string, number> = {
  "": 1, // a bare number means MiB
  k: 1 / 1024,
  m: 1,
  g: 1024,
  t: 1024 * 1024,
};

/** Parses "256MiB", "2G", "512 M", 1024 (MiB) into MiB; throws with what was expected. */
export function parseMemoryMiB(value: number | string): number {
  if (typeof value === "number") {
    if (value === Infinity) throw new Error(`expected a memory size a machine can have, found ${value}`);
    if (!Number.isInteger(value) || value < 1) throw new Error(`expected a whole number of MiB, found ${value}`);
    return value;
  }
  const m = /^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?b?)\s*$/i.exec(value);
  if (!m) throw new Error(`expected a size such as "256MiB" or "2GiB", found ${JSON.stringify(value)}`);
  const unit = m[2].toLowerCase();
  if (unit === "" && m[3] !== "") throw new Error(`expected a size such as "256MiB", found ${JSON.stringify(value)}`);
  const mib = parseFloat(m[1]) * FACTORS[unit];
  // Hundreds of digits overflow to Infinity: say so, rather than "Infinity is not a whole number".
  if (!Number.isFinite(mib)) throw new Error(`expected a memory size a machine can have, found ${JSON.stringify(value)}`);
  if (!Number.isInteger(mib)) throw new Error(`expected a whole number of MiB, ${JSON.stringify(value)} is ${mib} MiB`);
  return mib;
}

/** Bounds of one VM's memory: less does not boot a kernel, more (1 TiB) is beyond any VM we run. */
export const MIN_MEMORY_MIB = 16;
export const MAX_MEMORY_MIB = 1024 * 1024;
/** Most guest memory one host (node agent) can hold in total: 64 TiB, more than the largest single machines have. */
export const MAX_AGENT_MEMORY_MIB = 64 * 1024 * 1024;

/** Parses a memory size (as parseMemoryMiB) and checks it lies in [min, max] MiB; throws saying what was expected and found. */
export function parseMemoryInRange(value: number | string, min = MIN_MEMORY_MIB, max = MAX_MEMORY_MIB): number {
  const mib = parseMemoryMiB(value);
  if (mib < min || mib > max) throw new Error(`expected between ${min} MiB and ${max} MiB, found ${mib} MiB`);
  return mib;
}
