// Failure detection between a cluster's agents (issue 9, seed 000 §3.3):
// heartbeats over a binomial graph, failure reports routed around failed
// agents to the cluster's coordinator, and the coordinator's failure record.
//
// The graph: agent i watches (i + 2^j) mod n for j = 0..⌈log2 n⌉-1, so each
// agent watches O(log n) peers and is watched by as many (its in-neighbours
// i - 2^j): a lost host is detected by several survivors.
//
// A watch is one long-lived HTTPS request (cluster CA pinned, cluster token):
// GET /v1/cluster/heartbeat?from=<i> on the watched agent, whose answer
// streams one small line per period ({"h":host,"s":seq,"v":version}). The
// watcher suspects the peer when no line came for suspectMs. A streamed
// answer instead of one request per probe keeps the cost per beat to one
// TLS record each way (no TLS handshake, no HTTP parsing), which is what lets
// 1,024 agents share two cores in the benchmark; a closed stream is retried
// every period, and only silence (not a closed stream) declares a failure,
// so an agent restarting in place within suspectMs is not reported.
//
// What 20,480 beats a second (N = 1,024, 10 watches each) cost is what
// decides whether such a cluster settles on two cores, so: the watcher speaks
// the request and reads the chunked answer on its TLS socket itself, the
// server frames each beat's chunk once and writes it to every watcher's
// socket, every monitor of a process beats and is checked on one pair of
// timers, a check judges silence only after the I/O that waited behind it
// was read (a busy process does not take its own stall for its peers'
// silence), and a process runs at most MAX_CONNECTING watch handshakes at
// once (the start-up storm queues instead of timing itself out); repeated
// connections resume their TLS session (client.ts).
//
// A detector reports to the coordinator: the lowest-numbered host not known
// dead (host 0 unless it is the one lost). The report travels over the same
// graph: each hop forwards it to the out-neighbour that gets closest to the
// coordinator (clockwise distance strictly decreasing, so no loops), skipping
// peers known dead or that do not answer; every hop appends itself to the
// route and merges what it knows dead. The coordinator records which host,
// when, detected by whom and via which route, keeps it in
// <stateDir>/failures.json, serves it at GET /v1/cluster/failures, and hands
// it to the recovery policy (agent/recovery.ts).
//
// The VM specs a recovery needs travel with the beats: the version in each
// line changes with the watched agent's VMs, and the watcher then fetches
// GET /v1/cluster/replica; a report carries the lost host's last replica.
import * as crypto from "crypto";
import * as fs from "fs";
import type * as http from "http";
import * as path from "path";
import type * as tls from "tls";
import { AgentClient, connectPinned, parseAgentUrl } from "./client";
import type { Membership } from "./membership";
import { AgentRefusal, VM_NAME_PATTERN, VmSpec, VmState } from "./protocol";
import { writeFileAtomic } from "./state";

/** Defaults: a crashed or cut-off peer is suspected 2.0–2.5 s after its last beat (target ≤ 3 s). */
export const HEARTBEAT_DEFAULTS = { periodMs: 500, suspectMs: 2000 };
/** A peer never heard from is given this long (agents of a cluster start at different times) before it can be suspected. */
export const STARTUP_GRACE_MS = 10000;
const MAX_HOPS = 64;
/** A TLS handshake may take this long (many agents starting at once on busy hosts); silence, not a slow handshake, declares a failure. */
const HANDSHAKE_TIMEOUT_MS = 10000;
const RETRY_MAX_MS = 5000;
/** A relayed report waits this long for the rest of its route to the coordinator. */
const RELAY_TIMEOUT_MS = 20000;
const REPORT_BODY_LIMIT = 256 * 1024;
/** Watch handshakes in flight per process; the rest wait their turn (see connectSlot). */
export const MAX_CONNECTING = 8;

// ---- one pair of timers per process ----
// Every monitor of this process beats on one timer and is checked on another (the benchmark hosts 64 agents in
// a process; a daemon hosts one, for which this changes nothing).

interface Ticked {
  beat(): void;
  check(now: number): void;
}

const tickers = new Map<number, { members: Set<Ticked>; timers: NodeJS.Timeout[] }>();

function joinTicker(periodMs: number, t: Ticked): () => void {
  let k = tickers.get(periodMs);
  if (!k) {
    const members = new Set<Ticked>();
    const beat = setInterval(() => {
      for (const m of members) m.beat();
    }, periodMs);
    // Judged after the I/O phase (setImmediate): when this process was too busy to run its timers on time, the
    // beats that arrived meanwhile are read first, so its own stall is not taken for its peers' silence.
    const check = setInterval(
      () =>
        setImmediate(() => {
          const now = Date.now();
          for (const m of members) m.check(now);
        }),
      Math.max(10, Math.floor(periodMs / 4)),
    );
    k = { members, timers: [beat, check] };
    tickers.set(periodMs, k);
  }
  const ticker = k;
  ticker.members.add(t);
  return () => {
    ticker.members.delete(t);
    if (ticker.members.size || tickers.get(periodMs) !== ticker) return;
    ticker.timers.forEach((x) => clearInterval(x));
    tickers.delete(periodMs);
  };
}

// At most MAX_CONNECTING watch handshakes at a time per process: when a whole cluster starts (10,240 watches at
// N = 1,024), handshakes queue here instead of all starting at once and timing each other out on busy cores.
let connecting = 0;
const connectQueue: (() => void)[] = [];

function connectSlot(): Promise<() => void> {
  return new Promise((resolve) => {
    const grant = () => {
      connecting++;
      let freed = false;
      resolve(() => {
        if (freed) return;
        freed = true;
        connecting--;
        connectQueue.shift()?.();
      });
    };
    if (connecting < MAX_CONNECTING) grant();
    else connectQueue.push(grant);
  });
}

/** One VM as replicated to the agents that watch its host. */
export interface ReplicaVm {
  name: string;
  spec: VmSpec;
  state: VmState;
}

export interface Replica {
  host: number;
  version: number;
  vms: ReplicaVm[];
}

/** A failure report as it travels: who failed, who saw it, the hops so far, what the hops know dead. */
export interface FailureReport {
  failed: number;
  detector: number;
  detectedAt: string;
  /** How long the detector had heard nothing from the failed host. */
  silentMs: number;
  route: number[];
  dead: number[];
  replica?: Replica;
}

export interface Detection {
  host: number;
  detectedAt: string;
  silentMs: number;
  /** The hops from the detector to the coordinator, both included. */
  route: number[];
  receivedAt: string;
}

/** The coordinator's record of one lost host. */
export interface FailureRecord {
  host: number;
  url: string;
  firstDetectedAt: string;
  recordedAt: string;
  detectedBy: Detection[];
  /** The lost host's VMs as last replicated (the newest copy any detector held). */
  replica?: Replica;
  /** What the recovery policy did about it (agent/recovery.ts). */
  recovery?: { policy: string; at: string; actions: RecoveryAction[] };
}

export interface RecoveryAction {
  vm?: string;
  host?: number;
  action: string;
  ok: boolean;
  detail?: string;
  at: string;
}

export interface FailureView {
  self: number;
  coordinator: number;
  size: number;
  dead: number[];
  failures: FailureRecord[];
  /** Set when this agent fenced itself: it lost every peer it watches, so it is the one cut off. */
  isolatedAt?: string;
}

export interface HeartbeatOptions {
  membership: Membership;
  token: string;
  /** The cluster CA (PEM) every peer's certificate must chain to. */
  ca: string;
  periodMs?: number;
  suspectMs?: number;
  startupGraceMs?: number;
  /** How long a watch's TLS handshake may take (default 10 s). */
  handshakeTimeoutMs?: number;
  /** Where failures.json is kept (the coordinator's record survives the agent); none in the benchmark. */
  stateDir?: string;
  log?: (msg: string) => void;
  /** This agent's VMs, replicated to its watchers; version changes with them. */
  replica?: () => { version: number; vms: ReplicaVm[] };
  /** Called on the coordinator for each newly recorded lost host (after the first report). */
  onFailure?: (record: FailureRecord) => void;
  /** Called once when every watched peer went silent at once: this agent is the one cut off. */
  onIsolated?: () => void;
}

// ---- the graph ----

/** The peers host `self` watches in a cluster of n: (self + 2^j) mod n, j = 0..⌈log2 n⌉-1. */
export function binomialTargets(self: number, n: number): number[] {
  const out: number[] = [];
  for (let j = 0; 2 ** j < n; j++) {
    const t = (self + 2 ** j) % n;
    if (t !== self && !out.includes(t)) out.push(t);
  }
  return out;
}

/** The hosts that watch `self`: (self - 2^j) mod n; they are the ones that detect its loss. */
export function binomialWatchers(self: number, n: number): number[] {
  const out: number[] = [];
  for (let j = 0; 2 ** j < n; j++) {
    const w = (((self - 2 ** j) % n) + n) % n;
    if (w !== self && !out.includes(w)) out.push(w);
  }
  return out;
}

/** The coordinator as a host sees it: the lowest host it does not know dead. */
export function coordinatorOf(n: number, dead: Set<number>): number {
  for (let h = 0; h < n; h++) if (!dead.has(h)) return h;
  return -1;
}

/** Next hops from self towards target, best first: out-neighbours not known dead that strictly shorten the clockwise distance. */
export function nextHops(self: number, target: number, n: number, dead: Set<number>): number[] {
  const dist = (a: number) => (((target - a) % n) + n) % n;
  const d = dist(self);
  return binomialTargets(self, n)
    .filter((h) => !dead.has(h) && dist(h) < d)
    .sort((a, b) => dist(a) - dist(b));
}

// ---- wire checks ----

function isHost(v: unknown, n: number): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 0 && v < n;
}

function checkReport(body: unknown, n: number): FailureReport {
  const bad = (m: string) => new AgentRefusal(400, `body: ${m}`);
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw bad("expected a failure report object");
  const o = body as Record<string, unknown>;
  const extra = Object.keys(o).filter((k) => !["failed", "detector", "detectedAt", "silentMs", "route", "dead", "replica"].includes(k));
  if (extra.length) throw bad(`unknown field ${extra[0]}`);
  if (!isHost(o.failed, n)) throw bad(`failed: expected a host index below ${n}`);
  if (!isHost(o.detector, n)) throw bad(`detector: expected a host index below ${n}`);
  if (typeof o.detectedAt !== "string" || isNaN(Date.parse(o.detectedAt))) throw bad("detectedAt: expected an ISO date");
  if (typeof o.silentMs !== "number" || !(o.silentMs >= 0)) throw bad("silentMs: expected a number ≥ 0");
  if (!Array.isArray(o.route) || o.route.length > MAX_HOPS || !o.route.every((h) => isHost(h, n)))
    throw bad(`route: expected at most ${MAX_HOPS} host indices`);
  if (!Array.isArray(o.dead) || !o.dead.every((h) => isHost(h, n))) throw bad("dead: expected host indices");
  if (o.replica !== undefined) {
    const r = o.replica as Record<string, unknown> | null;
    if (typeof r !== "object" || r === null || !isHost(r.host, n) || typeof r.version !== "number" || !Array.isArray(r.vms))
      throw bad("replica: expected { host, version, vms }");
    for (const v of r.vms as unknown[]) {
      const vm = v as Record<string, unknown> | null;
      if (typeof vm !== "object" || vm === null || typeof vm.name !== "string" || !VM_NAME_PATTERN.test(vm.name) || typeof vm.spec !== "object")
        throw bad("replica.vms: expected { name, spec, state } each");
    }
  }
  return o as unknown as FailureReport;
}

export function readBody(req: http.IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > REPORT_BODY_LIMIT) {
        reject(new AgentRefusal(413, `body: expected at most ${REPORT_BODY_LIMIT} bytes`));
        req.removeAllListeners("data");
        req.resume();
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString("utf8")));
      } catch (err) {
        reject(new AgentRefusal(400, `body: expected JSON (${(err as Error).message})`));
      }
    });
    req.on("error", reject);
  });
}

interface Watch {
  host: number;
  /** When a beat last came (ms since epoch); the monitor's start time until the first one. */
  lastBeat: number;
  heard: boolean;
  version: number;
  replica?: Replica;
  dead: boolean;
  sock?: tls.TLSSocket;
  retry?: NodeJS.Timeout;
  connecting: boolean;
  /** Failed connection attempts since the last beat: the retry backs off with them. */
  attempts: number;
}

/** Byte and beat counters (application payload, without TLS and TCP framing). */
export interface HeartbeatStats {
  beatsSent: number;
  beatsReceived: number;
  payloadBytesSent: number;
  payloadBytesReceived: number;
  /** Peers this agent judged silent (each a report sent), and watch handshakes it began. */
  suspicions: number;
  handshakes: number;
}

/**
 * One agent's part of the failure detection: the watches on its targets, the
 * beat stream it serves to its watchers, report relaying and (when it is the
 * coordinator) the failure record.
 */
export class ClusterMonitor {
  readonly self: number;
  readonly n: number;
  readonly periodMs: number;
  readonly suspectMs: number;
  readonly stats: HeartbeatStats = { beatsSent: 0, beatsReceived: 0, payloadBytesSent: 0, payloadBytesReceived: 0, suspicions: 0, handshakes: 0 };
  private readonly watches: Watch[];
  /** The beat streams served, each with whether its chunks may be written to its socket as they are (see beat()). */
  private readonly subscribers = new Map<http.ServerResponse, boolean>();
  private readonly clients = new Map<number, AgentClient>();
  private readonly caFingerprint: string;
  /** Hosts this agent knows dead: detected here, learned from reports it relayed or recorded. */
  readonly dead = new Set<number>();
  private readonly failures = new Map<number, FailureRecord>();
  private leaveTicker?: () => void;
  private seq = 0;
  private startedAt = 0;
  private stopped = true;
  private isolatedAt?: string;
  private readonly log: (msg: string) => void;

  constructor(private readonly o: HeartbeatOptions) {
    this.self = o.membership.self;
    this.n = o.membership.agents.length;
    this.periodMs = o.periodMs ?? HEARTBEAT_DEFAULTS.periodMs;
    this.suspectMs = o.suspectMs ?? HEARTBEAT_DEFAULTS.suspectMs;
    if (!(this.periodMs >= 10) || !(this.suspectMs > this.periodMs))
      throw new Error(`heartbeat: expected periodMs ≥ 10 and suspectMs > periodMs, found ${this.periodMs} and ${this.suspectMs}`);
    this.caFingerprint = new crypto.X509Certificate(o.ca).fingerprint256;
    this.log = o.log ?? (() => undefined);
    this.watches = binomialTargets(this.self, this.n).map((host) => ({
      host,
      lastBeat: 0,
      heard: false,
      version: -1,
      dead: false,
      connecting: false,
      attempts: 0,
    }));
    const saved = o.stateDir ? readFailures(o.stateDir) : undefined;
    for (const f of saved ?? []) {
      this.failures.set(f.host, f);
      this.dead.add(f.host);
    }
  }

  /** Whether every watched peer has beaten at least once (the benchmark waits for this before it measures). */
  allHeard(): boolean {
    return this.watches.every((w) => w.heard);
  }

  /** The hosts this agent watches. */
  get targets(): number[] {
    return this.watches.map((w) => w.host);
  }

  get coordinator(): number {
    return coordinatorOf(this.n, this.dead);
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.startedAt = Date.now();
    for (const w of this.watches) {
      w.lastBeat = this.startedAt;
      this.connect(w);
    }
    this.leaveTicker = joinTicker(this.periodMs, { beat: () => this.beat(), check: (now) => this.check(now) });
    this.log(`heartbeats: host ${this.self} of ${this.n} watches ${this.targets.join(", ")} (every ${this.periodMs} ms, suspected after ${this.suspectMs} ms)`);
  }

  /** Stops watching and serving beats; open streams are closed, so watchers see silence as they would of a dead agent. */
  stop(): void {
    this.stopped = true;
    this.leaveTicker?.();
    this.leaveTicker = undefined;
    for (const w of this.watches) {
      clearTimeout(w.retry);
      w.sock?.destroy();
    }
    for (const res of this.subscribers.keys()) res.destroy();
    this.subscribers.clear();
  }

  private client(host: number): AgentClient {
    let c = this.clients.get(host);
    if (!c) {
      c = new AgentClient(this.o.membership.agents[host].url, this.o.token, { ca: this.o.ca });
      this.clients.set(host, c);
    }
    return c;
  }

  // ---- watching ----

  private connect(w: Watch): void {
    if (this.stopped || w.connecting) return;
    w.connecting = true;
    const url = this.o.membership.agents[w.host].url;
    const ep = parseAgentUrl(url);
    if (ep.kind !== "https") throw new Error(`heartbeat: host ${w.host}: expected an https agent, found ${url}`);
    let retried = false;
    // Once per connection, whichever of end, close and error comes first.
    const retry = () => {
      if (retried) return;
      retried = true;
      w.connecting = false;
      w.sock = undefined;
      if (this.stopped) return;
      clearTimeout(w.retry);
      // Backed off and jittered: when a whole cluster (re)connects at once, handshakes must not time each other out forever.
      const delay = Math.min(this.periodMs * 2 ** Math.min(w.attempts++, 6), RETRY_MAX_MS) * (0.5 + Math.random());
      w.retry = setTimeout(() => this.connect(w), delay);
    };
    const connected = connectSlot().then((free) => {
      if (this.stopped) {
        free();
        throw new Error("stopped");
      }
      this.stats.handshakes++;
      return connectPinned(ep.address, ep.port, this.o.ca, this.caFingerprint, this.o.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS).finally(free);
    });
    connected.then((sock) => {
      if (this.stopped) {
        sock.destroy();
        return;
      }
      w.sock = sock;
      sock.setNoDelay(true);
      sock.on("error", retry);
      sock.on("end", retry);
      sock.on("close", retry);
      this.readBeats(w, sock, `${ep.address}:${ep.port}`);
    }, retry);
  }

  /**
   * The watch's request and its streamed answer, spoken directly on the TLS socket: GET, then the answer's
   * head and its chunks (HTTP/1.1 chunked transfer coding, as the server sends it) parsed here. The wire is
   * what node's HTTP client would speak; its per-chunk work was a third of a beat's CPU (bench: detection).
   */
  private readBeats(w: Watch, sock: tls.TLSSocket, hostPort: string): void {
    const refuse = (why: string) => {
      this.log(`heartbeat: host ${w.host}: ${why}`);
      sock.destroy();
    };
    let buf = "";
    let head = true;
    let line = "";
    // latin1: one character per byte, so chunk sizes count characters; beat lines are ASCII JSON.
    sock.setEncoding("latin1");
    sock.on("data", (chunk: string) => {
      buf += chunk;
      if (head) {
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) {
          if (buf.length > 16384) refuse("answered the watch with a head over 16 KiB");
          return;
        }
        const status = /^HTTP\/1\.1 ([0-9]{3}) /.exec(buf);
        if (!status || status[1] !== "200") return refuse(`answered ${status ? status[1] : "something not HTTP/1.1"} to the watch`);
        if (!/\r\ntransfer-encoding: *chunked\r\n/i.test(`${buf.slice(0, end)}\r\n`)) return refuse("answered the watch without chunked transfer coding");
        buf = buf.slice(end + 4);
        head = false;
      }
      for (;;) {
        const nl = buf.indexOf("\r\n");
        if (nl < 0) break;
        const size = /^[0-9a-fA-F]{1,4}$/.test(buf.slice(0, nl)) ? parseInt(buf.slice(0, nl), 16) : -1;
        if (size <= 0) return refuse(size === 0 ? "ended the beat stream" : "sent a malformed chunk on the beat stream");
        if (buf.length < nl + size + 4) break;
        if (buf.slice(nl + 2 + size, nl + 4 + size) !== "\r\n") return refuse("sent a malformed chunk on the beat stream");
        line += buf.slice(nl + 2, nl + 2 + size);
        buf = buf.slice(nl + 4 + size);
        this.stats.payloadBytesReceived += size;
        let k;
        while ((k = line.indexOf("\n")) >= 0) {
          this.onBeat(w, line.slice(0, k));
          line = line.slice(k + 1);
        }
        if (line.length > 4096) return refuse("sent a beat line over 4 KiB");
      }
      if (buf.length > 8192) refuse("sent a chunk over 8 KiB on the beat stream");
    });
    sock.write(`GET /v1/cluster/heartbeat?from=${this.self} HTTP/1.1\r\nHost: ${hostPort}\r\nAuthorization: Bearer ${this.o.token}\r\n\r\n`);
  }

  private onBeat(w: Watch, line: string): void {
    let b: { h?: unknown; v?: unknown };
    try {
      b = JSON.parse(line);
    } catch {
      return;
    }
    if (b.h !== w.host) return;
    this.stats.beatsReceived++;
    w.lastBeat = Date.now();
    w.heard = true;
    w.attempts = 0;
    if (w.dead) {
      w.dead = false;
      this.dead.delete(w.host);
      this.log(`heartbeat: host ${w.host} beats again`);
    }
    if (typeof b.v === "number" && b.v !== w.version && this.o.replica) {
      const version = b.v;
      w.version = version;
      this.client(w.host)
        .request<Replica>("GET", "/v1/cluster/replica", undefined, 5000)
        .then(
          (r) => {
            if (r.host === w.host && (!w.replica || r.version >= w.replica.version)) w.replica = r;
          },
          () => {
            if (w.version === version) w.version = -1; // fetch again with the next beat
          },
        );
    }
  }

  private check(now: number): void {
    if (this.stopped) return;
    for (const w of this.watches) {
      if (w.dead) continue;
      const limit = w.heard ? this.suspectMs : this.suspectMs + (this.o.startupGraceMs ?? STARTUP_GRACE_MS);
      const silent = now - w.lastBeat;
      if (silent <= limit) continue;
      w.dead = true;
      this.stats.suspicions++;
      this.dead.add(w.host);
      // Silence since the last beat it did send: the measure of the detection latency.
      this.log(`heartbeat: host ${w.host} silent for ${silent} ms: reporting it lost`);
      // The stream stays open: if the peer was only slow, its next beat clears it without a new handshake.
      void this.reportLoss(w, silent);
    }
    if (!this.isolatedAt && this.watches.length >= 2 && this.watches.every((w) => w.dead)) {
      this.isolatedAt = new Date().toISOString();
      this.log(`heartbeat: every peer this agent watches (${this.targets.join(", ")}) is silent: this host is the one cut off`);
      this.o.onIsolated?.();
    }
  }

  private async reportLoss(w: Watch, silentMs: number): Promise<void> {
    const report: FailureReport = {
      failed: w.host,
      detector: this.self,
      detectedAt: new Date().toISOString(),
      silentMs,
      route: [],
      dead: [...this.dead],
      ...(w.replica ? { replica: w.replica } : {}),
    };
    // Retried while the host stays lost: the coordinator may itself be being replaced.
    for (let attempt = 0; attempt < 20 && !this.stopped && w.dead; attempt++) {
      try {
        const ack = await this.relay(report);
        this.log(`heartbeat: loss of host ${w.host} recorded by host ${ack.recordedBy} via ${ack.route.join(" → ")}`);
        return;
      } catch (err) {
        this.log(`heartbeat: report of host ${w.host} not delivered (${(err as Error).message}); retrying`);
        await new Promise((r) => setTimeout(r, this.periodMs * 2));
      }
    }
  }

  // ---- routing ----

  /** Delivers a report to the coordinator, this agent being the next hop; resolves with who recorded it and the whole route. */
  async relay(report: FailureReport): Promise<{ recordedBy: number; route: number[] }> {
    if (report.route.includes(this.self)) throw new AgentRefusal(508, `route ${report.route.join(" → ")} already passed host ${this.self}`);
    const route = [...report.route, this.self];
    if (route.length > MAX_HOPS) throw new AgentRefusal(508, `route longer than ${MAX_HOPS} hops`);
    const dead = new Set<number>([...report.dead, ...this.dead, report.failed]);
    // What a report says is lost is lost for routing here too, until it beats again.
    this.learnDead(report.failed);
    const tried = new Set<number>();
    for (;;) {
      const target = coordinatorOf(this.n, dead);
      if (target === this.self) return { recordedBy: this.self, route: this.record(report, route) };
      if (target < 0) throw new AgentRefusal(502, "no live coordinator known");
      const hops = nextHops(this.self, target, this.n, new Set([...dead, ...tried]));
      if (!hops.length) throw new AgentRefusal(502, `no live next hop from host ${this.self} towards host ${target}`);
      const hop = hops[0];
      try {
        return await this.client(hop).request<{ recordedBy: number; route: number[] }>(
          "POST",
          "/v1/cluster/report",
          { ...report, route, dead: [...dead] },
          RELAY_TIMEOUT_MS,
        );
      } catch (err) {
        tried.add(hop);
        // A hop whose host refuses or cannot be reached is dead (if it was the coordinator, the next one takes over);
        // a slow one (a busy host) is only skipped here: it is not reported dead to anyone.
        if (/ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|ECONNRESET/.test((err as Error).message)) dead.add(hop);
        this.log(`heartbeat: report of host ${report.failed}: hop ${hop} failed (${(err as Error).message}); routing around it`);
      }
    }
  }

  /** A host another agent reported lost: skipped for routing here; a watcher of it still detects and reports it itself (several detectors). */
  private learnDead(host: number): void {
    if (host !== this.self) this.dead.add(host);
  }

  /** The coordinator's part: adds the detection to the record of the lost host; returns the route as recorded. */
  private record(report: FailureReport, route: number[]): number[] {
    const now = new Date().toISOString();
    let rec = this.failures.get(report.failed);
    const isNew = !rec;
    if (!rec) {
      rec = { host: report.failed, url: this.o.membership.agents[report.failed].url, firstDetectedAt: report.detectedAt, recordedAt: now, detectedBy: [] };
      this.failures.set(report.failed, rec);
    }
    if (!rec.detectedBy.some((d) => d.host === report.detector)) {
      rec.detectedBy.push({ host: report.detector, detectedAt: report.detectedAt, silentMs: report.silentMs, route, receivedAt: now });
      if (Date.parse(report.detectedAt) < Date.parse(rec.firstDetectedAt)) rec.firstDetectedAt = report.detectedAt;
    }
    if (report.replica && report.replica.host === report.failed && (!rec.replica || report.replica.version > rec.replica.version)) rec.replica = report.replica;
    this.persist();
    this.log(`coordinator: host ${report.failed} lost, detected by host ${report.detector} via ${route.join(" → ")}`);
    if (isNew) this.o.onFailure?.(rec);
    return route;
  }

  /** Records what a recovery did (agent/recovery.ts), kept with the failure. */
  noteRecovery(host: number, policy: string, action: RecoveryAction): void {
    const rec = this.failures.get(host);
    if (!rec) return;
    rec.recovery ??= { policy, at: action.at, actions: [] };
    rec.recovery.actions.push(action);
    this.persist();
  }

  /** The record as served: every lost host, by whom and how it was seen. */
  view(): FailureView {
    return {
      self: this.self,
      coordinator: this.coordinator,
      size: this.n,
      dead: [...this.dead].sort((a, b) => a - b),
      failures: [...this.failures.values()].sort((a, b) => a.host - b.host),
      ...(this.isolatedAt ? { isolatedAt: this.isolatedAt } : {}),
    };
  }

  /** The newest replica this agent holds of a host it watches. */
  replicaOf(host: number): Replica | undefined {
    return this.watches.find((w) => w.host === host)?.replica ?? this.failures.get(host)?.replica;
  }

  private persist(): void {
    if (!this.o.stateDir) return;
    try {
      writeFileAtomic(path.join(this.o.stateDir, FAILURES_FILE), JSON.stringify({ failures: [...this.failures.values()] }, null, 2));
    } catch (err) {
      this.log(`coordinator: cannot write the failure record: ${(err as Error).message}`);
    }
  }

  // ---- serving ----

  private beatLine(): string {
    return JSON.stringify({ h: this.self, s: this.seq, v: this.o.replica?.().version ?? 0 }) + "\n";
  }

  private beat(): void {
    this.seq++;
    if (!this.subscribers.size) return;
    const line = this.beatLine();
    // The next chunk of each watcher's chunked answer, framed once and written to its socket as it is: the bytes
    // res.write(line) sends, without its per-call work (at N = 1,024 a cluster sends 20,480 beats a second).
    const frame = Buffer.from(`${line.length.toString(16)}\r\n${line}\r\n`, "latin1");
    for (const [res, raw] of this.subscribers) {
      const sock = res.socket;
      if (raw && sock && !sock.destroyed) sock.write(frame);
      else res.write(line);
      this.stats.beatsSent++;
      this.stats.payloadBytesSent += line.length;
    }
  }

  /**
   * The /v1/cluster/ routes of failure detection (the caller has checked the
   * token). Returns the answer ([200, null] for the beat stream, already
   * answered here), or undefined for a path that is not one of them.
   */
  async handle(req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<[number, unknown] | undefined> {
    const allow = (method: string) => {
      if (req.method !== method) throw new AgentRefusal(405, `${req.method} is not allowed on ${url.pathname}`);
    };
    switch (url.pathname) {
      case "/v1/cluster/heartbeat": {
        allow("GET");
        const from = Number(url.searchParams.get("from"));
        if (!isHost(from, this.n) || !binomialWatchers(this.self, this.n).includes(from))
          throw new AgentRefusal(400, `from: expected one of the hosts that watch host ${this.self} (${binomialWatchers(this.self, this.n).join(", ")})`);
        if (this.stopped) throw new AgentRefusal(503, "heartbeats are stopped on this agent");
        res.writeHead(200, { "Content-Type": "application/x-ndjson", "Cache-Control": "no-store" });
        res.socket?.setNoDelay(true);
        const line = this.beatLine();
        res.write(line);
        this.stats.payloadBytesSent += line.length;
        // Headers and the first chunk went through res: later chunks may go to the socket directly when they are chunks (HTTP/1.1).
        this.subscribers.set(res, (res as unknown as { chunkedEncoding?: boolean }).chunkedEncoding === true);
        res.on("close", () => this.subscribers.delete(res));
        return [200, null];
      }
      case "/v1/cluster/replica": {
        allow("GET");
        const r = this.o.replica?.() ?? { version: 0, vms: [] };
        return [200, { host: this.self, version: r.version, vms: r.vms } satisfies Replica];
      }
      case "/v1/cluster/report": {
        allow("POST");
        const report = checkReport(await readBody(req), this.n);
        return [200, await this.relay(report)];
      }
      case "/v1/cluster/failures": {
        allow("GET");
        return [200, this.view()];
      }
      default:
        return undefined;
    }
  }
}

export const FAILURES_FILE = "failures.json";

/** The failure record an agent kept in its state directory (the coordinator's survives it). */
export function readFailures(stateDir: string): FailureRecord[] | undefined {
  try {
    const doc = JSON.parse(fs.readFileSync(path.join(stateDir, FAILURES_FILE), "utf8")) as { failures?: FailureRecord[] };
    return Array.isArray(doc.failures) ? doc.failures : undefined;
  } catch {
    return undefined;
  }
}

/** The cluster CA from an agent's certificate file (issueServerCert writes the host's certificate, then the CA's). */
export function caFromChain(certPem: string): string {
  const certs = certPem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  for (const pem of certs.reverse()) {
    if (new crypto.X509Certificate(pem).ca) return pem + "\n";
  }
  throw new Error("expected the cluster's CA certificate at the end of the agent's certificate chain");
}
