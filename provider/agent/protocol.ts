// The node agent's HTTP API, shared by the agent and its clients.
//
//   GET    /healthz                  liveness, no token needed
//   GET    /v1/vms                   every VM this agent holds
//   PUT    /v1/vms/{name}            desired state (idempotent)
//   GET    /v1/vms/{name}            desired + observed state, job result
//   DELETE /v1/vms/{name}            stop the VM and forget it
//   POST   /v1/vms/{name}/incoming   start QEMU waiting for a live migration (body: VmSpec)
//   POST   /v1/vms/{name}/migrate    migrate the running VM to {target} and forget it here
//   POST   /v1/shutdown              stop every VM, then the agent exits
//
// Every /v1 request needs "Authorization: Bearer <token>" (401 otherwise).

export const VM_NAME_PATTERN = /^[a-z]([a-z0-9-]{0,78}[a-z0-9])?$/;

export const AGENT_HYPERVISORS = ["qemu", "libvirt"];

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
}

export type VmState = "starting" | "running" | "exited" | "failed" | "stopped";

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
  const allowed = ["hypervisor", "config", "markers", "stopGraceSeconds", "afterJob"];
  const extra = Object.keys(b).filter((k) => !allowed.includes(k));
  if (extra.length) return `${extra[0]}: unknown field; expected one of ${allowed.join(", ")}`;
  if (typeof b.hypervisor !== "string" || !AGENT_HYPERVISORS.includes(b.hypervisor)) {
    return `hypervisor: expected one of ${AGENT_HYPERVISORS.map((h) => JSON.stringify(h)).join(", ")} (what a node agent runs), found ${JSON.stringify(b.hypervisor)}`;
  }
  if (typeof b.config !== "string" || !b.config.trim()) return "config: expected a non-empty string";
  if (b.config.length > 65536) return "config: expected at most 65536 characters";
  const m = b.markers as Record<string, unknown> | undefined;
  if (typeof m !== "object" || m === null || typeof m.begin !== "string" || typeof m.end !== "string" || !m.begin || !m.end) {
    return "markers: expected an object with non-empty strings begin and end";
  }
  if (typeof b.stopGraceSeconds !== "number" || !(b.stopGraceSeconds >= 0 && b.stopGraceSeconds <= 600)) {
    return "stopGraceSeconds: expected a number from 0 to 600";
  }
  if (b.afterJob !== undefined && b.afterJob !== "stay-up" && b.afterJob !== "power-off")
    return `afterJob: expected "stay-up" or "power-off", found ${JSON.stringify(b.afterJob)}`;
  return undefined;
}
