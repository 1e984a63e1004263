// Where a `pulumi up` spends its time, from the engine's own event stream (Automation API onEvent,
// delivered over gRPC as the engine emits them, stamped here on arrival) and from timing every CLI
// command the Automation API runs. Used by `npm run bench`.
import * as fs from "fs";
import * as path from "path";
import type { EngineEvent } from "@pulumi/pulumi/automation";

type Stack = Awaited<ReturnType<typeof import("../cli/engine").openStack>>;

export interface TimedEvent {
  /** Seconds since the call started. */
  t: number;
  kind: string;
  urn?: string;
  op?: string;
  message?: string;
}

export interface Timeline {
  /** Wall clock of the whole Automation API call. */
  wall: number;
  /** Every CLI command the call ran: args, start and end (seconds since the call started). */
  commands: { args: string; start: number; end: number }[];
  events: TimedEvent[];
}

/** Runs op (stack.up, stack.preview, …) with its CLI commands timed and the engine's events stamped; returns its result and the timeline. */
export async function timed<T>(stack: Stack, op: (onEvent: (e: EngineEvent) => void) => Promise<T>): Promise<{ result: T; timeline: Timeline }> {
  const cmd = stack.workspace.pulumiCommand as unknown as { run: (args: string[], ...rest: unknown[]) => Promise<unknown> };
  const original = cmd.run;
  const t0 = process.hrtime.bigint();
  const now = () => Number(process.hrtime.bigint() - t0) / 1e9;
  const commands: Timeline["commands"] = [];
  const events: TimedEvent[] = [];
  cmd.run = async function (args: string[], ...rest: unknown[]) {
    const start = now();
    try {
      return await original.call(this, args, ...rest);
    } finally {
      commands.push({ args: args.slice(0, 2).join(" "), start, end: now() });
    }
  };
  const onEvent = (e: EngineEvent) => {
    const t = now();
    const kind = Object.keys(e).find((k) => k.endsWith("Event")) ?? "unknown";
    const body = (e as unknown as Record<string, unknown>)[kind] as
      { metadata?: { urn?: string; op?: string }; message?: string; severity?: string } | undefined;
    const ev: TimedEvent = { t, kind };
    if (body?.metadata) Object.assign(ev, { urn: body.metadata.urn, op: body.metadata.op });
    if (kind === "diagnosticEvent" && body?.message) ev.message = body.message.slice(0, 200);
    events.push(ev);
  };
  try {
    const result = await op(onEvent);
    return { result, timeline: { wall: now(), commands, events } };
  } finally {
    cmd.run = original;
  }
}

/** The resource type of a URN (…::type::name). */
export function typeOf(urn: string): string {
  const parts = urn.split("::");
  return parts[parts.length - 2] ?? urn;
}

const first = (events: TimedEvent[], pred: (e: TimedEvent) => boolean) => events.find(pred)?.t;
const last = (events: TimedEvent[], pred: (e: TimedEvent) => boolean) => [...events].reverse().find(pred)?.t;

export interface Breakdown {
  /** t0 → preludeEvent: CLI start, project, stack, backend and config loaded. */
  engineStart: number;
  /** preludeEvent → the Stack resource registered: language host started, Node and @pulumi/pulumi loaded. */
  languageHost: number;
  /** Stack registered → the first custom resource's RegisterResource RPC sent: the program itself (definitions, plan, render). */
  program: number;
  /** First custom resource sent → the dynamic-provider plugin's default provider resource created: plugin process started. */
  pluginStart: number;
  /** Per resource type: seconds from its resourcePreEvent to its resOutputsEvent (the longest one of the type), and when it started. */
  resources: Record<string, { start: number; seconds: number; count: number }>;
  /** When the last resource (not the stack) got its outputs, seconds since the call started. */
  lastResourceAt: number;
  /** Last resource done → summaryEvent: stack outputs registered, program and update finished. */
  finish: number;
  /** summaryEvent → the `pulumi up` process has exited: final checkpoint, plugins and language host shut down, CLI exit. */
  engineExit: number;
  /** The CLI process of the operation itself (up/preview/destroy). */
  engineProcess: number;
  /** After the engine exited, what the Automation API runs besides: `stack output` (twice) and `stack history` for up. */
  automationTail: number;
}

export function breakdown(tl: Timeline, opName = "up"): Breakdown {
  const ev = tl.events;
  const main = tl.commands.find((c) => c.args.startsWith(opName)) ?? { start: 0, end: tl.wall };
  const prelude = first(ev, (e) => e.kind === "preludeEvent") ?? 0;
  const stackPre = first(ev, (e) => e.kind === "resourcePreEvent" && typeOf(e.urn ?? "") === "pulumi:pulumi:Stack") ?? prelude;
  const firstCustomSent =
    first(ev, (e) => e.kind === "diagnosticEvent" && /^RegisterResource RPC prepared: t=(?!pulumi:pulumi:Stack)/.test(e.message ?? "")) ?? stackPre;
  const providerPre = first(ev, (e) => e.kind === "resourcePreEvent" && typeOf(e.urn ?? "").startsWith("pulumi:providers:")) ?? firstCustomSent;
  const resources: Breakdown["resources"] = {};
  const pre = new Map<string, number>();
  for (const e of ev) {
    if (!e.urn) continue;
    const type = typeOf(e.urn);
    if (type === "pulumi:pulumi:Stack" || type.startsWith("pulumi:providers:")) continue;
    const key = type.split(":").pop()!;
    if (e.kind === "resourcePreEvent") pre.set(e.urn, e.t);
    if (e.kind === "resOutputsEvent" && pre.has(e.urn)) {
      const r = (resources[key] ??= { start: Infinity, seconds: 0, count: 0 });
      r.start = Math.min(r.start, pre.get(e.urn)!);
      r.seconds = Math.max(r.seconds, e.t - pre.get(e.urn)!);
      r.count++;
    }
  }
  const lastResource = last(ev, (e) => e.kind === "resOutputsEvent" && typeOf(e.urn ?? "") !== "pulumi:pulumi:Stack") ?? providerPre;
  const summary = first(ev, (e) => e.kind === "summaryEvent") ?? main.end;
  return {
    engineStart: prelude - main.start,
    languageHost: stackPre - prelude,
    program: Math.max(0, firstCustomSent - stackPre),
    pluginStart: Math.max(0, providerPre - firstCustomSent),
    resources,
    lastResourceAt: lastResource,
    finish: summary - lastResource,
    engineExit: main.end - summary,
    engineProcess: main.end - main.start,
    automationTail: tl.wall - main.end,
  };
}

/** The stack's checkpoint in a file backend: <backend>/.pulumi/stacks/<project>/<stack>.json. */
export function checkpointFile(backendDir: string, project: string, stack: string): string {
  const candidates = [path.join(backendDir, ".pulumi", "stacks", project, `${stack}.json`), path.join(backendDir, ".pulumi", "stacks", `${stack}.json`)];
  const found = candidates.find((f) => fs.existsSync(f));
  if (!found) throw new Error(`no checkpoint of stack ${stack} under ${backendDir}`);
  return found;
}
