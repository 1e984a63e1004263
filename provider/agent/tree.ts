// The k-ary bootstrap tree of a cluster's agents (issue 9; seed 000, §3.2).
//
// Hosts are numbered 0..n-1; host i's children are k·i+1 … k·i+k, so the tree
// is as shallow as k allows (depth ⌈log_k n⌉) and every agent can compute its
// place from its index. The controller starts only host 0's agent and hands it
// the whole host list; every agent, once it serves over TLS, starts its k
// children with the launcher (allocation/launcher.ts) and hands each its
// subtree; it reports up when its whole subtree has answered.
//
// A link is a child process's stdin and stdout (JSON lines; ssh carries them
// the same way): down goes the launch payload (token, CA, the subtree's
// certificates and keys, never on a command line), then `commit` or `abort`;
// up come `hello` (the child serves), `ready` (its subtree serves) or `failed`
// (which host, and why). Every link has a handshake with a timer:
// - the parent: the child must say hello and then answer a TLS health check,
//   with the cluster's CA pinned and for its own address, within
//   linkTimeoutMs, and its subtree must report within linkTimeoutMs per level
//   below it; otherwise that host is reported failed, with the reason;
// - the child: until the bootstrap is committed it checks its parent
//   (GET /v1/tree over TLS) every parentCheckMs and ends itself, with its
//   subtree, when the parent has not answered for parentTimeoutMs, or at once
//   when the link to its parent closes.
// A failure anywhere fails the bootstrap (all or nothing): the agent that sees
// it reports it up, aborts its children and ends itself, so the abort sweeps
// the tree and a failed bootstrap leaves no process and no state directory.
// Once the controller commits, the commit goes down the links (and, should a
// link miss it, the next parent check sees `running`); the agents then run on
// their own and failure detection takes over (the heartbeat graph).
import * as fs from "fs";
import * as path from "path";
import * as readline from "readline";
import type { Readable, Writable } from "stream";
import { checkListenAddress } from "../allocation/tls";
import { AgentClient } from "./client";
import { Membership, writeMembership } from "./membership";
import { AgentRefusal, TOKEN_PATTERN } from "./protocol";
import { writeFileAtomic } from "./state";

/** A host as the tree sees it: where its agent serves, and for namespace hosts the namespace to launch it in. */
export interface TreeHost {
  address: string;
  port: number;
  netns?: string;
  /** The host keeps its own image store, <its state dir>/images, which images are staged into (allocation/staging.ts). */
  ownImageStore?: boolean;
}

export interface TreeTimers {
  /** A child's hello and TLS handshake must come within this; its subtree gets this much per level. */
  linkTimeoutMs: number;
  /** How often a child checks its parent until the bootstrap is committed. */
  parentCheckMs: number;
  /** A child whose parent has not answered for this long ends itself. */
  parentTimeoutMs: number;
}

// Generous: node starts slowly on a loaded 2-core host, and a timer that fires on a healthy link fails the whole cluster.
export const DEFAULT_TREE_TIMERS: TreeTimers = { linkTimeoutMs: 30000, parentCheckMs: 1000, parentTimeoutMs: 10000 };

export interface HostCredentials {
  /** The host's certificate chain (PEM), issued by the cluster's CA for its address. */
  cert: string;
  /** Its private key (PEM). */
  key: string;
}

/** What an agent is launched with (its link's first message). */
export interface TreePayload {
  self: number;
  fanout: number;
  /** Benchmark only: the controller starts every agent itself (no agent has children). */
  flat?: boolean;
  /** Who launched this agent: a host index, or null for the controller. */
  parent: number | null;
  hosts: TreeHost[];
  /** Host i keeps its state in <clusterDir>/host-<i> (on its host). */
  clusterDir: string;
  token: string;
  clusterKey: string;
  /** The cluster CA's certificate: every link's TLS check pins it. */
  caPem: string;
  /** Credentials by address, for this agent's subtree only. */
  certs: Record<string, HostCredentials>;
  imageStore: string;
  policyFile?: string;
  timers: TreeTimers;
  /** When the parent launched this agent (ms since the epoch): for the benchmark's breakdown. */
  launchAt: number;
}

/** What an agent reports of itself, collected up the tree. */
export interface TreeAgentInfo {
  host: number;
  url: string;
  pid: number;
  /** The pid of the process that started this agent's process (its parent agent's, for a process launch). */
  ppid: number;
  launchedBy: number | null;
  stateDir: string;
  address: string;
  port: number;
  netns?: string;
  localUrl: string;
  timing: { launchAt: number; servingAt: number; readyAt: number };
}

export type UpMessage =
  | { t: "hello"; host: number; pid: number; url: string }
  | { t: "ready"; host: number; agents: TreeAgentInfo[] }
  | { t: "failed"; host: number; failedHost: number; reason: string };
export type DownMessage = { t: "launch"; payload: TreePayload } | { t: "commit"; host: number } | { t: "abort"; host: number; reason: string };

export const MAX_TREE_HOSTS = 4096;

export function treeChildren(self: number, fanout: number, n: number): number[] {
  const out: number[] = [];
  for (let j = 1; j <= fanout && self * fanout + j < n; j++) out.push(self * fanout + j);
  return out;
}

export function treeParent(self: number, fanout: number): number | null {
  return self === 0 ? null : Math.floor((self - 1) / fanout);
}

export function subtreeOf(self: number, fanout: number, n: number): number[] {
  const out = [self];
  for (let i = 0; i < out.length; i++) out.push(...treeChildren(out[i], fanout, n));
  return out;
}

export function subtreeHeight(self: number, fanout: number, n: number): number {
  let h = 0;
  for (let first = self; first * fanout + 1 < n; first = first * fanout + 1) h++;
  return h;
}

export function hostUrl(h: Pick<TreeHost, "address" | "port">): string {
  return `https://${h.address}:${h.port}`;
}

export function hostStateDir(clusterDir: string, host: number): string {
  return path.join(clusterDir, `host-${host}`);
}

/** What is wrong with a launch payload (it crosses a process boundary, maybe a host's), or undefined. */
export function checkTreePayload(p: unknown): string | undefined {
  if (typeof p !== "object" || p === null) return "expected an object";
  const o = p as Partial<TreePayload>;
  if (!Array.isArray(o.hosts) || o.hosts.length < 1 || o.hosts.length > MAX_TREE_HOSTS) return `hosts: expected 1 to ${MAX_TREE_HOSTS} hosts`;
  const n = o.hosts.length;
  for (let i = 0; i < n; i++) {
    const h = o.hosts[i];
    try {
      checkListenAddress(h?.address);
    } catch (err) {
      return `hosts[${i}]: ${(err as Error).message}`;
    }
    if (!Number.isInteger(h.port) || h.port < 1 || h.port > 65535) return `hosts[${i}].port: expected 1 to 65535`;
    if (h.netns !== undefined && !/^vse-[a-z0-9]{1,6}-h[0-9]{1,3}$/.test(h.netns)) return `hosts[${i}].netns: expected vse-<tag>-h<n>`;
    if (h.ownImageStore !== undefined && typeof h.ownImageStore !== "boolean") return `hosts[${i}].ownImageStore: expected true or false`;
  }
  const index = (v: unknown) => Number.isInteger(v) && (v as number) >= 0 && (v as number) < n;
  if (!index(o.self)) return `self: expected a host index below ${n}`;
  if (!Number.isInteger(o.fanout) || o.fanout! < 1 || o.fanout! > 64) return "fanout: expected 1 to 64";
  if (o.parent !== null && !index(o.parent)) return "parent: expected null or a host index";
  if (!o.flat && o.parent !== treeParent(o.self!, o.fanout!))
    return `parent: host ${o.self}'s parent in a ${o.fanout}-ary tree is ${treeParent(o.self!, o.fanout!)}`;
  if (typeof o.clusterDir !== "string" || !path.isAbsolute(o.clusterDir)) return "clusterDir: expected an absolute path";
  if (typeof o.imageStore !== "string" || !path.isAbsolute(o.imageStore)) return "imageStore: expected an absolute path";
  if (o.policyFile !== undefined && (typeof o.policyFile !== "string" || !path.isAbsolute(o.policyFile))) return "policyFile: expected an absolute path";
  if (typeof o.clusterKey !== "string" || !/^[0-9a-f]{10}$/.test(o.clusterKey)) return "clusterKey: expected 10 hex digits";
  const t = TOKEN_PATTERN.exec(typeof o.token === "string" ? o.token : "");
  if (!t || t[1] !== o.clusterKey) return "token: expected a token of the cluster";
  if (typeof o.caPem !== "string" || !o.caPem.includes("BEGIN CERTIFICATE")) return "caPem: expected a PEM certificate";
  if (typeof o.certs !== "object" || o.certs === null) return "certs: expected an object";
  const c = o.certs[o.hosts[o.self!].address];
  if (!c || typeof c.cert !== "string" || typeof c.key !== "string") return `certs: no certificate for this host's address ${o.hosts[o.self!].address}`;
  const tm = o.timers;
  if (!tm || ![tm.linkTimeoutMs, tm.parentCheckMs, tm.parentTimeoutMs].every((x) => Number.isInteger(x) && x >= 50 && x <= 3600000))
    return "timers: expected linkTimeoutMs, parentCheckMs, parentTimeoutMs in ms (50 to 3600000)";
  if (typeof o.launchAt !== "number") return "launchAt: expected a time";
  return undefined;
}

/** The credentials of a subtree's hosts: what a child is handed, nothing more. */
function subtreeCerts(p: TreePayload, child: number): Record<string, HostCredentials> {
  const out: Record<string, HostCredentials> = {};
  for (const h of p.flat ? [child] : subtreeOf(child, p.fanout, p.hosts.length)) {
    const a = p.hosts[h].address;
    if (p.certs[a]) out[a] = p.certs[a];
  }
  return out;
}

export function childPayload(p: TreePayload, child: number): TreePayload {
  return { ...p, self: child, parent: p.flat ? null : p.self, certs: subtreeCerts(p, child), launchAt: Date.now() };
}

/** One link to a launched child (a process, or in the benchmark's shared processes an agent in the same process). */
export interface ChildLink {
  /** Messages from the child's agent. */
  onMessage(cb: (m: UpMessage) => void): void;
  /** The link broke (the process ended, the pipe closed), with why. */
  onGone(cb: (why: string) => void): void;
  send(m: DownMessage): void;
  /** After commit: the child runs on its own; drop the link without ending it. */
  release(): void;
  /** Tells the child to end with its subtree; resolves when it has (or, past a grace period, has been killed). */
  abort(reason: string): Promise<void>;
}

export type ChildLauncher = (child: number, payload: TreePayload) => ChildLink;

export class SubtreeFailure extends Error {
  constructor(
    readonly host: number,
    readonly reason: string,
    hosts: TreeHost[],
  ) {
    super(`host ${host} (${hosts[host]?.address ?? "?"}): ${reason}`);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * The parent's side of one link: hello, then a TLS health check of the child
 * at its own address with the CA pinned (the handshake), each within
 * linkTimeoutMs; then the subtree's report within linkTimeoutMs per level.
 * Resolves with the subtree's agents, rejects with a SubtreeFailure naming the host.
 */
export function superviseChild(p: TreePayload, child: number, link: ChildLink): Promise<TreeAgentInfo[]> {
  const { linkTimeoutMs } = p.timers;
  const n = p.hosts.length;
  const url = hostUrl(p.hosts[child]);
  return new Promise((resolve, reject) => {
    let phase: "hello" | "handshake" | "subtree" | "done" = "hello";
    let early: TreeAgentInfo[] | undefined;
    let timer: NodeJS.Timeout | undefined;
    const fail = (host: number, reason: string) => {
      if (phase === "done") return;
      phase = "done";
      clearTimeout(timer);
      reject(new SubtreeFailure(host, reason, p.hosts));
    };
    const arm = (ms: number, what: string) => {
      clearTimeout(timer);
      timer = setTimeout(() => fail(child, `${what} within ${ms} ms`), ms);
    };
    const done = (agents: TreeAgentInfo[]) => {
      phase = "done";
      clearTimeout(timer);
      resolve(agents);
    };
    arm(linkTimeoutMs, "its agent did not say it serves (no hello on its link)");
    link.onGone((why) => fail(child, `its link broke before the bootstrap finished: ${why}`));
    link.onMessage((m) => {
      if (m.t === "failed") return fail(m.failedHost, m.reason);
      if (m.t === "ready") {
        if (phase === "subtree") return done(m.agents);
        early = m.agents;
        return;
      }
      if (m.t !== "hello" || phase !== "hello") return;
      phase = "handshake";
      arm(linkTimeoutMs, `no TLS handshake with ${url} (CA pinned)`);
      const client = new AgentClient(url, p.token, { ca: p.caPem });
      const handshake = async (): Promise<void> => {
        let last = "";
        while (phase === "handshake") {
          try {
            const h = await client.health();
            if (h.pid === m.pid) return;
            last = `pid ${h.pid} answers on ${url}, not the agent launched (pid ${m.pid})`;
          } catch (err) {
            last = (err as Error).message;
          }
          await sleep(200);
        }
        throw new Error(last);
      };
      handshake().then(
        () => {
          if (phase !== "handshake") return;
          phase = "subtree";
          if (early) return done(early);
          const levels = subtreeHeight(child, p.fanout, n);
          arm(linkTimeoutMs * (levels + 1), `its subtree (${subtreeOf(child, p.fanout, n).length} hosts, ${levels} levels) did not report`);
        },
        (err: Error) => fail(child, `TLS handshake with ${url} failed: ${err.message}`),
      );
    });
  });
}

/** What hosting one tree agent takes, however it is hosted (its own process, or a benchmark's shared one). */
export interface TreeNodeEnv {
  payload: TreePayload;
  pid: number;
  ppid: number;
  stateDir: string;
  localUrl: string;
  /** To the parent (or the controller). */
  up: (m: UpMessage) => void;
  launch: ChildLauncher;
  /** Ends this agent (its VMs, its listeners) and removes its state directory; called once its children have ended. */
  end: (reason: string) => Promise<void>;
  log: (m: string) => void;
}

/** One agent's part of the bootstrap. */
export class TreeNode {
  state: "bootstrapping" | "running" | "failed" = "bootstrapping";
  private readonly links = new Map<number, ChildLink>();
  private checkTimer?: NodeJS.Timeout;
  private ending?: Promise<void>;
  private servingAt = 0;

  constructor(readonly env: TreeNodeEnv) {}

  get self(): number {
    return this.env.payload.self;
  }

  get children(): number[] {
    const p = this.env.payload;
    return p.flat ? [] : treeChildren(p.self, p.fanout, p.hosts.length);
  }

  /** What GET /v1/tree answers (a child's parent check). */
  view(): { host: number; state: string; parent: number | null; children: number[] } {
    return { host: this.self, state: this.state, parent: this.env.payload.parent, children: this.children };
  }

  membership(): Membership {
    const p = this.env.payload;
    return {
      self: p.self,
      fanout: p.fanout,
      parent: p.parent,
      children: this.children,
      agents: p.hosts.map((h, host) => ({ host, url: hostUrl(h) })),
    };
  }

  /** Called once this agent serves: say hello, launch and supervise the children, report up. Never rejects: a failure is reported up. */
  async start(): Promise<void> {
    try {
      await this.run();
    } catch (err) {
      if (this.state === "bootstrapping") {
        this.state = "failed";
        this.env.up({ t: "failed", host: this.self, failedHost: this.self, reason: (err as Error).message });
      }
      await this.endWithSubtree(`the bootstrap failed here: ${(err as Error).message}`);
    }
  }

  private async run(): Promise<void> {
    const p = this.env.payload;
    this.servingAt = Date.now();
    this.env.log(
      `tree: host ${p.self} serving, launched by ${p.parent === null ? "the controller" : `host ${p.parent}`} (ppid ${this.env.ppid}), children [${this.children.join(", ")}]`,
    );
    this.env.up({ t: "hello", host: p.self, pid: this.env.pid, url: hostUrl(p.hosts[p.self]) });
    if (p.parent !== null) this.checkParent();
    let agents: TreeAgentInfo[][];
    try {
      agents = await Promise.all(
        this.children.map((c) => {
          let link: ChildLink;
          try {
            link = this.env.launch(c, childPayload(p, c));
          } catch (err) {
            return Promise.reject(new SubtreeFailure(c, `could not launch its agent: ${(err as Error).message}`, p.hosts));
          }
          this.links.set(c, link);
          return superviseChild(p, c, link);
        }),
      );
    } catch (err) {
      const f = err instanceof SubtreeFailure ? err : new SubtreeFailure(p.self, (err as Error).message, p.hosts);
      if (this.state === "bootstrapping") {
        this.state = "failed";
        this.env.log(`tree: bootstrap failed at ${f.message}`);
        this.env.up({ t: "failed", host: p.self, failedHost: f.host, reason: f.reason });
      }
      await this.endWithSubtree(`the bootstrap failed at ${f.message}`);
      return;
    }
    if (this.state !== "bootstrapping") return;
    const h = p.hosts[p.self];
    const me: TreeAgentInfo = {
      host: p.self,
      url: hostUrl(h),
      pid: this.env.pid,
      ppid: this.env.ppid,
      launchedBy: p.parent,
      stateDir: this.env.stateDir,
      address: h.address,
      port: h.port,
      ...(h.netns ? { netns: h.netns } : {}),
      localUrl: this.env.localUrl,
      timing: { launchAt: p.launchAt, servingAt: this.servingAt, readyAt: Date.now() },
    };
    this.env.up({ t: "ready", host: p.self, agents: [me, ...agents.flat()] });
  }

  /** A message from the parent's side of the link. */
  onDown(m: DownMessage): void {
    if (m.t === "commit") this.commit();
    else if (m.t === "abort")
      void this.endWithSubtree(`aborted by ${this.env.payload.parent === null ? "the controller" : `host ${this.env.payload.parent}`}: ${m.reason}`);
  }

  /** The link to the parent closed: before the commit, that is the parent gone. */
  onParentGone(why: string): void {
    if (this.state !== "bootstrapping") return;
    void this.endWithSubtree(`parent ${this.env.payload.parent === null ? "(the controller)" : `host ${this.env.payload.parent}`} lost: ${why}`);
  }

  private commit(): void {
    if (this.state !== "bootstrapping") return;
    this.state = "running";
    clearInterval(this.checkTimer);
    // Only a committed agent has a membership: the heartbeat graph (agent/heartbeat.ts) starts on it, and must not probe a half-made tree.
    try {
      writeMembership(this.env.stateDir, this.membership());
    } catch (err) {
      this.env.log(`tree: could not write the membership: ${(err as Error).message}`);
    }
    for (const [c, link] of this.links) {
      link.send({ t: "commit", host: c });
      link.release();
    }
    this.links.clear();
    this.env.log("tree: bootstrap committed, running");
  }

  private checkParent(): void {
    const p = this.env.payload;
    const parent = p.parent!;
    const url = hostUrl(p.hosts[parent]);
    const client = new AgentClient(url, p.token, { ca: p.caPem });
    let lastAnswer = Date.now();
    let inFlight = false;
    this.checkTimer = setInterval(() => {
      if (this.state !== "bootstrapping") return clearInterval(this.checkTimer);
      const silent = Date.now() - lastAnswer;
      if (silent > p.timers.parentTimeoutMs) {
        clearInterval(this.checkTimer);
        void this.endWithSubtree(`parent host ${parent} (${url}) did not answer its check for ${silent} ms (timer ${p.timers.parentTimeoutMs} ms)`);
        return;
      }
      if (inFlight) return;
      inFlight = true;
      client
        .request<{ state: string }>("GET", "/v1/tree", undefined, Math.max(1000, p.timers.parentCheckMs))
        .then(
          (v) => {
            lastAnswer = Date.now();
            if (v.state === "running") this.commit();
            else if (v.state === "failed") void this.endWithSubtree(`parent host ${parent} reports the bootstrap failed`);
          },
          () => undefined,
        )
        .finally(() => (inFlight = false));
    }, p.timers.parentCheckMs);
  }

  /** Ends the children (each with its subtree), then this agent. Once. */
  endWithSubtree(reason: string): Promise<void> {
    if (!this.ending) {
      if (this.state === "bootstrapping") {
        this.state = "failed";
        // Said up the link while it still works (a pipe, not the network): the controller learns which host gave up, and why.
        this.env.up({ t: "failed", host: this.self, failedHost: this.self, reason });
      }
      clearInterval(this.checkTimer);
      this.env.log(`tree: ending this agent and its subtree: ${reason}`);
      const links = [...this.links.values()];
      this.links.clear();
      this.ending = Promise.allSettled(links.map((l) => l.abort(reason))).then(() => this.env.end(reason));
    }
    return this.ending;
  }
}

/** The /v1/tree route (server.ts dispatches to it): an agent's place and state in the bootstrap. */
export function treeRoute(view: (() => unknown) | undefined, method: string | undefined): [number, unknown] {
  if (method !== "GET") throw new AgentRefusal(405, `${method} is not allowed on /v1/tree`);
  if (!view) throw new AgentRefusal(404, "this agent was not started over a bootstrap tree");
  return [200, view()];
}

function tail(file: string, lines = 8): string {
  try {
    return fs.readFileSync(file, "utf8").trim().split("\n").slice(-lines).join("\n");
  } catch {
    return "";
  }
}

/**
 * A link that is a process hosting one agent (or, in the benchmark, several):
 * launch payloads go down its stdin, messages come up its stdout, both JSON
 * lines; its stderr goes to logFile. Messages are routed by host index.
 */
export class ProcessLink {
  private readonly routes = new Map<number, { msg: (m: UpMessage) => void; gone: (why: string) => void }>();
  private readonly proc: import("execa").ExecaChildProcess;
  private exited = false;
  private released = false;
  private readonly exitedP: Promise<void>;

  constructor(cmd: { file: string; args: string[] }, logFile: string) {
    const execa = require("execa") as typeof import("execa");
    fs.mkdirSync(path.dirname(logFile), { recursive: true, mode: 0o700 });
    const fd = fs.openSync(logFile, "a", 0o600);
    try {
      // Detached: ending this agent must not take the child with it by signal; the tree ends it by its own rules.
      this.proc = execa(cmd.file, cmd.args, { detached: true, stdin: "pipe", stdout: "pipe", stderr: fd, cleanup: false, reject: false, buffer: false });
    } finally {
      fs.closeSync(fd);
    }
    this.proc.catch(() => undefined);
    this.proc.stdin!.on("error", () => undefined);
    this.exitedP = new Promise((resolve) =>
      this.proc.on("exit", (code, signal) => {
        this.exited = true;
        resolve();
        if (this.released) return;
        const why = `its process ended (${signal ?? `exit ${code}`})${tail(logFile) ? `: ${tail(logFile)}` : ""}`;
        for (const r of this.routes.values()) r.gone(why);
      }),
    );
    readline.createInterface({ input: this.proc.stdout! }).on("line", (line) => {
      let m: UpMessage;
      try {
        m = JSON.parse(line) as UpMessage;
      } catch {
        return;
      }
      if (typeof m === "object" && m !== null) this.routes.get(m.host)?.msg(m);
    });
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  send(m: DownMessage): void {
    if (!this.exited && !this.released) this.proc.stdin!.write(`${JSON.stringify(m)}\n`);
  }

  /** Launches an agent in this process: its payload down the link. */
  launch(host: number, payload: TreePayload): ChildLink {
    const handlers: { msg: ((m: UpMessage) => void)[]; gone: ((why: string) => void)[] } = { msg: [], gone: [] };
    this.routes.set(host, { msg: (m) => handlers.msg.forEach((f) => f(m)), gone: (w) => handlers.gone.forEach((f) => f(w)) });
    this.send({ t: "launch", payload });
    return {
      onMessage: (cb) => handlers.msg.push(cb),
      onGone: (cb) => handlers.gone.push(cb),
      send: (m) => this.send(m),
      release: () => {
        this.routes.delete(host);
        if (this.routes.size === 0) this.release();
      },
      abort: async (reason) => {
        this.routes.delete(host);
        this.send({ t: "abort", host, reason });
        if (this.routes.size === 0) await this.end();
      },
    };
  }

  /** Drops the link; the process runs on. */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.proc.stdin!.end();
    this.proc.stdout!.destroy();
    this.proc.unref();
  }

  /** Closes its stdin (the agents in it end themselves) and waits; kills it past a grace period. */
  async end(graceMs = 5000): Promise<void> {
    this.proc.stdin!.end();
    const t = setTimeout(() => {
      try {
        this.proc.kill("SIGKILL");
      } catch {
        // gone
      }
    }, graceMs);
    await this.exitedP;
    clearTimeout(t);
  }
}

/** The agent side of a process link: launch payloads and down messages from stdin, up messages to stdout. */
export class ParentPipe {
  private closed = false;

  constructor(
    input: Readable,
    private readonly output: Writable,
    handlers: { launch: (p: TreePayload) => void; down: (m: DownMessage) => void; gone: (why: string) => void },
  ) {
    output.on("error", () => undefined);
    const rl = readline.createInterface({ input });
    rl.on("line", (line) => {
      let m: DownMessage;
      try {
        m = JSON.parse(line) as DownMessage;
      } catch {
        return handlers.gone(`unreadable message on the link: ${line.slice(0, 100)}`);
      }
      if (m.t === "launch") {
        const problem = checkTreePayload(m.payload);
        if (problem) return handlers.gone(`launch payload: ${problem}`);
        handlers.launch(m.payload);
      } else handlers.down(m);
    });
    rl.on("close", () => {
      this.closed = true;
      handlers.gone("its link (stdin) closed");
    });
  }

  send(m: UpMessage): void {
    if (!this.closed) this.output.write(`${JSON.stringify(m)}\n`);
  }
}

/**
 * The launcher of real agents: each child its own process, started on its
 * host with launchCommand (namespace host or this machine), its stderr in its
 * state directory's agent.log (the hosts launched this way share this
 * machine's filesystem; a remote launcher brings stderr back instead).
 */
export function processLauncher(entry: string[]): ChildLauncher {
  const { launchCommand } = require("../allocation/launcher") as typeof import("../allocation/launcher");
  return (child, payload) => {
    const stateDir = hostStateDir(payload.clusterDir, child);
    const cmd = launchCommand(payload.hosts[child], [...entry, "--tree", "--state-dir", stateDir]);
    return new ProcessLink(cmd, path.join(stateDir, "agent.log")).launch(child, payload);
  };
}

/**
 * Agent side, in main.ts (`--tree --state-dir DIR`): reads the launch payload
 * from stdin, writes the token and TLS files into the state directory, sends
 * the agent's log to DIR/agent.log (stdout is the link), and returns the
 * argv main.ts goes on with, plus what starts the node once the agent serves.
 */
export async function treeAgentSetup(stateDir: string): Promise<{
  argv: string[];
  view: () => unknown;
  start: (o: { localUrl: string; shutdown: () => Promise<void> }) => void;
}> {
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  fs.chmodSync(stateDir, 0o700);
  const logFd = fs.openSync(path.join(stateDir, "agent.log"), "a", 0o600);
  const util = require("util") as typeof import("util");
  console.log = (...a: unknown[]) => fs.writeSync(logFd, `${util.format(...a)}\n`);
  console.error = console.log;
  let node: TreeNode | undefined;
  let goneEarly: string | undefined;
  let up: (m: UpMessage) => void = () => undefined;
  const payload = await new Promise<TreePayload>((resolve, reject) => {
    const pipe = new ParentPipe(process.stdin, process.stdout, {
      launch: (p) => {
        if (p.self === undefined || hostStateDir(p.clusterDir, p.self) !== stateDir)
          return reject(new Error(`launch payload: host ${p.self}'s state directory is not ${stateDir}`));
        resolve(p);
      },
      down: (m) => node?.onDown(m),
      gone: (why) => {
        if (node) node.onParentGone(why);
        else {
          goneEarly = why;
          reject(new Error(`no launch payload: ${why}`));
        }
      },
    });
    up = (m) => pipe.send(m);
  });
  const h = payload.hosts[payload.self];
  const creds = payload.certs[h.address];
  const tokenFile = path.join(stateDir, "token");
  writeFileAtomic(tokenFile, payload.token, 0o600);
  const tlsDir = path.join(stateDir, "tls");
  fs.mkdirSync(tlsDir, { recursive: true, mode: 0o700 });
  writeFileAtomic(path.join(tlsDir, "agent.key"), creds.key, 0o600);
  writeFileAtomic(path.join(tlsDir, "agent.pem"), creds.cert, 0o644);
  const imageStore = h.ownImageStore ? path.join(stateDir, "images") : payload.imageStore;
  if (h.ownImageStore) fs.mkdirSync(imageStore, { recursive: true, mode: 0o755 });
  const argv = ["--token-file", tokenFile, "--cluster-key", payload.clusterKey, "--image-store", imageStore];
  argv.push("--listen", `${h.address}:${h.port}`, "--tls-cert", path.join(tlsDir, "agent.pem"), "--tls-key", path.join(tlsDir, "agent.key"));
  if (payload.policyFile) argv.push("--policy", payload.policyFile);
  const { AGENT_MAIN } = require("../allocation/local") as typeof import("../allocation/local");
  return {
    argv,
    view: () => node?.view() ?? { host: payload.self, state: "starting" },
    start: ({ localUrl, shutdown }) => {
      node = new TreeNode({
        payload,
        pid: process.pid,
        ppid: process.ppid,
        stateDir,
        localUrl,
        up: (m) => up(m),
        launch: processLauncher([process.execPath, AGENT_MAIN]),
        end: async (reason) => {
          console.log(`${new Date().toISOString()} ending: ${reason}`);
          await shutdown().catch(() => undefined);
          // Nothing of a failed bootstrap stays on the host.
          fs.rmSync(stateDir, { recursive: true, force: true });
          process.exit(0);
        },
        log: (m) => console.log(`${new Date().toISOString()} ${m}`),
      });
      if (goneEarly) node.onParentGone(goneEarly);
      void node.start();
    },
  };
}

export interface TreeBootstrapOptions {
  clusterDir: string;
  hosts: TreeHost[];
  fanout: number;
  token: string;
  clusterKey: string;
  caPem: string;
  certs: Record<string, HostCredentials>;
  imageStore: string;
  policyFile?: string;
  timers?: Partial<TreeTimers>;
  /** Benchmark only: the controller launches every agent itself. */
  flat?: boolean;
  /** How children are started; default: a process each (processLauncher over agent/main.js). */
  launcher?: ChildLauncher;
}

/** A bootstrap that has answered: every agent serves; commit() lets them run, abort() ends them all. */
export interface TreeBootstrap {
  agents: TreeAgentInfo[];
  commit(): void;
  abort(reason: string): Promise<void>;
}

/**
 * The controller's side: launches host 0's agent (or, flat, every agent)
 * and waits until every agent has answered. On failure every launched
 * subtree is aborted and the error names the host and why.
 */
export async function bootstrapTree(o: TreeBootstrapOptions): Promise<TreeBootstrap> {
  const { AGENT_MAIN } = require("../allocation/local") as typeof import("../allocation/local");
  const n = o.hosts.length;
  const root: TreePayload = {
    self: 0,
    fanout: o.fanout,
    ...(o.flat ? { flat: true } : {}),
    parent: null,
    hosts: o.hosts,
    clusterDir: o.clusterDir,
    token: o.token,
    clusterKey: o.clusterKey,
    caPem: o.caPem,
    certs: o.certs,
    imageStore: o.imageStore,
    ...(o.policyFile ? { policyFile: o.policyFile } : {}),
    timers: { ...DEFAULT_TREE_TIMERS, ...o.timers },
    launchAt: Date.now(),
  };
  const problem = checkTreePayload(root);
  if (problem) throw new Error(`bootstrap: ${problem}`);
  const launcher = o.launcher ?? processLauncher([process.execPath, AGENT_MAIN]);
  const tops = o.flat ? Array.from({ length: n }, (_, i) => i) : [0];
  const links = new Map<number, ChildLink>();
  const abort = async (reason: string) => {
    const all = [...links.values()];
    links.clear();
    await Promise.allSettled(all.map((l) => l.abort(reason)));
  };
  try {
    const agents = await Promise.all(
      tops.map((c) => {
        const payload = o.flat ? { ...childPayload(root, c), parent: null } : root;
        const link = launcher(c, payload);
        links.set(c, link);
        return superviseChild(payload, c, link);
      }),
    );
    return {
      agents: agents.flat().sort((a, b) => a.host - b.host),
      commit: () => {
        for (const [c, link] of links) {
          link.send({ t: "commit", host: c });
          link.release();
        }
        links.clear();
      },
      abort,
    };
  } catch (err) {
    await abort(`the bootstrap failed: ${(err as Error).message}`);
    throw err;
  }
}
