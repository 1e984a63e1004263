// An agent's place in its cluster's bootstrap tree (issue 9), written by the
// tree bootstrap (agent/tree.ts) to <stateDir>/membership.json before the
// agent reports up, and read by whatever needs the cluster's agents from a
// host (the heartbeat graph, routing around failed agents).
import * as fs from "fs";
import * as path from "path";
import { writeFileAtomic } from "./state";

export interface MembershipAgent {
  /** Host index in the cluster's host list. */
  host: number;
  /** https://<address>:<port> of that host's agent. */
  url: string;
}

export interface Membership {
  /** This agent's host index. */
  self: number;
  /** k of the k-ary bootstrap tree. */
  fanout: number;
  /** The host index of the agent that launched this one; null for the root (launched by the controller). */
  parent: number | null;
  /** The host indices this agent launched, in launch order. */
  children: number[];
  /** Every agent of the cluster, index = host. */
  agents: MembershipAgent[];
}

export const MEMBERSHIP_FILE = "membership.json";

export function membershipFile(stateDir: string): string {
  return path.join(stateDir, MEMBERSHIP_FILE);
}

function isIndex(v: unknown, n: number): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 0 && v < n;
}

/** What is wrong with a membership document, or undefined when it is well formed. */
export function checkMembership(m: unknown): string | undefined {
  if (typeof m !== "object" || m === null || Array.isArray(m)) return "expected an object";
  const o = m as Record<string, unknown>;
  const extra = Object.keys(o).filter((k) => !["self", "fanout", "parent", "children", "agents"].includes(k));
  if (extra.length) return `unknown field ${extra[0]}`;
  if (!Array.isArray(o.agents) || o.agents.length === 0) return "agents: expected a non-empty array";
  const n = o.agents.length;
  for (let i = 0; i < n; i++) {
    const a = o.agents[i] as Record<string, unknown> | null;
    if (typeof a !== "object" || a === null || a.host !== i || typeof a.url !== "string" || !/^https:\/\/[0-9.]{7,15}:[0-9]{1,5}$/.test(a.url))
      return `agents[${i}]: expected { host: ${i}, url: "https://<address>:<port>" }`;
  }
  if (!isIndex(o.self, n)) return `self: expected a host index below ${n}`;
  if (typeof o.fanout !== "number" || !Number.isInteger(o.fanout) || o.fanout < 1 || o.fanout > 64) return "fanout: expected an integer 1 to 64";
  if (o.parent !== null && !isIndex(o.parent, n)) return `parent: expected null or a host index below ${n}`;
  if (!Array.isArray(o.children) || o.children.length > o.fanout || !o.children.every((c) => isIndex(c, n)))
    return `children: expected at most ${String(o.fanout)} host indices below ${n}`;
  return undefined;
}

/** Reads <stateDir>/membership.json; undefined when there is none, an error naming the file when it is malformed. */
export function readMembership(stateDir: string): Membership | undefined {
  const file = membershipFile(stateDir);
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new Error(`${file}: expected JSON (${(err as Error).message})`);
  }
  const problem = checkMembership(doc);
  if (problem) throw new Error(`${file}: ${problem}`);
  return doc as Membership;
}

/** Writes <stateDir>/membership.json atomically (readers never see a torn file). */
export function writeMembership(stateDir: string, m: Membership): void {
  const problem = checkMembership(m);
  if (problem) throw new Error(`membership of host ${m.self}: ${problem}`);
  writeFileAtomic(membershipFile(stateDir), JSON.stringify(m, null, 2) + "\n", 0o644);
}
