// The node agent's HTTP API, shared by the agent and its clients. Local agents
// serve it on a unix socket inside their 0700 state directory, so a client
// knows who it talks to before it sends the token.
//
//   GET    /healthz                  liveness, no token needed
//   GET    /v1/policy                the site policy this agent enforces, no token needed
//   GET    /v1/vms                   every VM this agent holds
//   PUT    /v1/vms/{name}            desired state (idempotent)
//   GET    /v1/vms/{name}            desired + observed state, job result
//   DELETE /v1/vms/{name}            stop the VM and forget it
//   POST   /v1/vms/{name}/incoming   start QEMU waiting for a live migration (body: VmSpec)
//   POST   /v1/vms/{name}/migrate    migrate the running VM to {target} and forget it here
//   POST   /v1/vms/{name}/checkpoint save the running VM to a checkpoint of the host's store → { checkpoint } (agent/checkpoint.ts)
//   GET    /v1/checkpoints           the checkpoints of the host's store
//   GET    /v1/accounting            CPU, memory and wall time per VM, on this host (agent/accounting.ts)
//   POST   /v1/shutdown              stop every VM, then the agent exits
//
// Every other /v1 request needs "Authorization: Bearer <token>": missing or
// wrong gets 401, a token of another cluster 403. A config outside the agent's
// allowlist or the site policy gets 403, naming the line or rule and field.

export const VM_NAME_PATTERN = /^[a-z]([a-z0-9-]{0,78}[a-z0-9])?$/;

export const AGENT_HYPERVISORS = ["qemu", "libvirt"];

/** A refusal with its HTTP status: 400 malformed, 401/403 authentication, 403 policy or allowlist, 404, 409, 413. */
export class AgentRefusal extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** A cluster's token names its cluster (the public key part) so an agent can tell a foreign token (403) from a wrong one (401). */
export const TOKEN_PATTERN = /^vse1\.([0-9a-f]{10})\.([0-9a-f]{64})$/;

export function newClusterToken(clusterKey: string): string {
  const crypto = require("crypto") as typeof import("crypto");
  return `vse1.${clusterKey}.${crypto.randomBytes(32).toString("hex")}`;
}

/** Control characters (C0 and DEL) other than the ones allowed; a config may only carry newlines between its lines. */
export function controlCharacter(text: string, allowNewline = false): { index: number; code: number } | undefined {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if ((c < 0x20 && !(allowNewline && c === 0x0a)) || c === 0x7f) return { index: i, code: c };
  }
  return undefined;
}

export interface VmSpec {
  /** qemu (the agent supervises QEMU itself) or libvirt (through libvirtd); others are refused with 400. */
  hypervisor: string;
  /** The rendered, line-oriented hypervisor config. */
  config: string;
  /** Markers around the job's output on the serial console. */
  markers: { begin: string; end: string };
  /** Seconds of grace between ACPI power-down and a forced stop. */
  stopGraceSeconds: number;
  /** Whether the guest ends itself after its job; lets the agent tell a clean power-off from a crash when it only sees the process vanish. */
  afterJob?: "stay-up" | "power-off";
  /** Desired run state of a started VM (default running): paused stops its vCPUs in place (DriverOps.pause), running resumes them. */
  state?: "running" | "paused";
  /** "checkpoint:<64 hex>": a start restores this checkpoint of the host's store (agent/checkpoint.ts) instead of booting. */
  restoreFrom?: string;
  /** A warm image's job (its argv and environment are not in the image): handed to the guest with its identity after the restore. */
  job?: { command: string[]; env: Record<string, string> };
}

/** Limits on a handed job: what a guest's control port takes in one go. */
export const JOB_LIMITS = { maxArgs: 256, maxEnv: 128, maxBytes: 32768 };
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;

function checkJob(j: unknown): string | undefined {
  if (typeof j !== "object" || j === null || Array.isArray(j) || Object.keys(j).some((k) => k !== "command" && k !== "env"))
    return "job: expected { command, env }";
  const { command, env } = j as { command?: unknown; env?: unknown };
  if (!Array.isArray(command) || command.length < 1 || command.length > JOB_LIMITS.maxArgs || command.some((a) => typeof a !== "string"))
    return `job.command: expected 1 to ${JOB_LIMITS.maxArgs} strings`;
  if (typeof env !== "object" || env === null || Array.isArray(env)) return "job.env: expected an object of strings";
  const vars = Object.entries(env as Record<string, unknown>);
  if (vars.length > JOB_LIMITS.maxEnv) return `job.env: expected at most ${JOB_LIMITS.maxEnv} variables`;
  for (const [k, v] of vars) {
    if (!ENV_NAME.test(k)) return `job.env: ${JSON.stringify(k.slice(0, 100))} is not a variable name`;
    if (typeof v !== "string") return `job.env.${k}: expected a string`;
  }
  const all = [...(command as string[]), ...vars.map(([k, v]) => `${k}=${String(v)}`)];
  if (all.some((a) => a.includes("\0"))) return "job: NUL is not allowed in an argument or a value";
  if (all.reduce((n, a) => n + Buffer.byteLength(a), 0) > JOB_LIMITS.maxBytes)
    return `job: expected at most ${JOB_LIMITS.maxBytes} bytes of arguments and values`;
  return undefined;
}

export const CHECKPOINT_REF = /^checkpoint:([0-9a-f]{64})$/;

export type VmState = "starting" | "running" | "paused" | "exited" | "failed" | "stopped";

export interface JobResult {
  state: "waiting" | "done";
  exitCode?: number;
  output?: string;
}

export interface VmObserved {
  state: VmState;
  pid?: number;
  startedAt?: string;
  /** How the last QEMU process ended, when it did. */
  lastExit?: { at: string; code: number | null; signal: string | null; expected: boolean };
  /** How many times the agent started this VM. */
  starts: number;
  /** Set while the VM waits for a live migration: where the source sends its state. */
  incoming?: string;
  /** How the VM's current process came up: restored from a warm-launch snapshot, or booted. */
  launch?: "warm" | "cold";
  message?: string;
}

export interface VmView {
  name: string;
  spec: VmSpec;
  observed: VmObserved;
  job: JobResult;
  /** The last lines of the serial console, for error messages. */
  consoleTail: string;
}

/** Validates a PUT body; returns a message naming the field, or undefined when valid. */
export function checkVmSpec(body: unknown): string | undefined {
  if (typeof body !== "object" || body === null || Array.isArray(body)) return "body: expected a JSON object";
  const b = body as Record<string, unknown>;
  const allowed = ["hypervisor", "config", "markers", "stopGraceSeconds", "afterJob", "state", "restoreFrom", "job"];
  const extra = Object.keys(b).filter((k) => !allowed.includes(k));
  if (extra.length) return `${extra[0]}: unknown field; expected one of ${allowed.join(", ")}`;
  if (typeof b.hypervisor !== "string" || !AGENT_HYPERVISORS.includes(b.hypervisor)) {
    return `hypervisor: expected one of ${AGENT_HYPERVISORS.map((h) => JSON.stringify(h)).join(", ")} (what a node agent runs), found ${JSON.stringify(b.hypervisor)}`;
  }
  if (typeof b.config !== "string" || !b.config.trim()) return "config: expected a non-empty string";
  if (b.config.length > 65536) return "config: expected at most 65536 characters";
  const cc = controlCharacter(b.config, true);
  if (cc) {
    const line = b.config.slice(0, cc.index).split("\n").length;
    return `config line ${line}: control character 0x${cc.code.toString(16).padStart(2, "0")} is not allowed`;
  }
  const m = b.markers as Record<string, unknown> | undefined;
  if (typeof m !== "object" || m === null || Array.isArray(m) || Object.keys(m).some((k) => k !== "begin" && k !== "end")) {
    return "markers: expected an object with exactly the strings begin and end";
  }
  for (const k of ["begin", "end"] as const) {
    const v = m[k];
    if (typeof v !== "string" || !/^[ -~]{1,128}$/.test(v)) return `markers.${k}: expected 1 to 128 printable ASCII characters`;
  }
  if (typeof b.stopGraceSeconds !== "number" || !(b.stopGraceSeconds >= 0 && b.stopGraceSeconds <= 600)) {
    return "stopGraceSeconds: expected a number from 0 to 600";
  }
  if (b.afterJob !== undefined && b.afterJob !== "stay-up" && b.afterJob !== "power-off")
    return `afterJob: expected "stay-up" or "power-off", found ${JSON.stringify(b.afterJob)}`;
  if (b.state !== undefined && b.state !== "running" && b.state !== "paused") return `state: expected "running" or "paused", found ${JSON.stringify(b.state)}`;
  if (b.restoreFrom !== undefined && (typeof b.restoreFrom !== "string" || !CHECKPOINT_REF.test(b.restoreFrom)))
    return `restoreFrom: expected "checkpoint:<64 hex digits>", found ${JSON.stringify(b.restoreFrom).slice(0, 100)}`;
  if (b.restoreFrom !== undefined && b.hypervisor !== "qemu")
    return `restoreFrom: checkpoints are restored by "qemu" only, found ${JSON.stringify(b.hypervisor)}`;
  if (b.job !== undefined) return checkJob(b.job);
  return undefined;
}
