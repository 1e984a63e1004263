// BENCHMARK ONLY (npm run bench -- --only bootstrap, provider/bench/bootstrap.ts):
// a process that hosts many tree agents on one namespace host, so that 1,024
// agents fit on this machine. Each hosted agent is a real Agent with its own
// listening socket on its own port of the host's address, and runs the same
// bootstrap code as a daemon agent (agent/tree.ts TreeNode): it launches its
// children, does the TLS handshake with each over its socket, checks its
// parent over TLS, reports up. What differs: a child placed in the same
// process is started in-process (a new Agent and listener, no process
// spawn); agents serve no unix socket; and the agents of one host address in
// a process share one HTTPS server object for their connections, so one TLS
// context for the host's certificate (agent/server.ts createSharedTlsServer;
// a daemon agent makes its own, once), each handshake still on the agent's
// own socket.
//
//   node dist/provider/bench/tree-host.js --tree --state-dir <clusterDir>/proc-<anchor>
// with launch payloads (agent/tree.ts) on stdin, as a daemon agent gets its one.
import * as fs from "fs";
import type * as http from "http";
import type * as https from "https";
import * as net from "net";
import * as path from "path";
import { Agent } from "../agent/agent";
import { ImageStore } from "../agent/image-store";
import { createSharedTlsServer, requestListener, SERVER_LIMITS } from "../agent/server";
import { ChildLauncher, ChildLink, DownMessage, hostStateDir, ParentPipe, ProcessLink, TreeNode, TreePayload, UpMessage } from "../agent/tree";
import { launchCommand } from "../allocation/launcher";
import type { SitePolicy } from "../model/types.generated";

// Loaded when first asked for (no request of the bootstrap asks): model/site-policy brings the definitions' parsers.
const permissivePolicy = (): SitePolicy => (require("../model/site-policy") as typeof import("../model/site-policy")).PERMISSIVE_SITE_POLICY;

export const TREE_HOST_MAIN = __filename.endsWith(".ts") ? path.resolve(__dirname, "..", "..", "dist", "provider", "bench", "tree-host.js") : __filename;

/** The argv of a tree-host process; with VSE_BENCH_CPU_PROF=<dir>, each writes a V8 CPU profile there as it exits. */
export function treeHostArgv(procDir: string): string[] {
  const prof = process.env.VSE_BENCH_CPU_PROF;
  const flags = prof && path.isAbsolute(prof) ? ["--cpu-prof", "--cpu-prof-dir", prof] : [];
  return [process.execPath, ...flags, TREE_HOST_MAIN, "--tree", "--state-dir", procDir];
}

/**
 * Which process hosts agent i: agents are grouped into connected pieces of
 * the tree, one per process, so that only the top agent of each piece is a
 * process launch and the rest are in-process launches by their parents. The
 * pieces hang from the tree level with the most nodes that still fits
 * `processes`: below that level an agent goes with its ancestor there, above
 * it with its first child's piece. With n ≤ processes every agent has a
 * process of its own. Flat: agents simply by host.
 */
export function processOf(n: number, fanout: number, processes: number): number[] {
  if (n <= processes) return Array.from({ length: n }, (_, i) => i);
  const depth: number[] = [0];
  for (let i = 1; i < n; i++) depth.push(depth[Math.floor((i - 1) / fanout)] + 1);
  const count = new Map<number, number>();
  for (const d of depth) count.set(d, (count.get(d) ?? 0) + 1);
  let level = 0;
  for (const [d, c] of count) if (c <= processes && c >= (count.get(level) ?? 0)) level = d;
  const anchor = (i: number): number => {
    let a = i;
    while (depth[a] > level) a = Math.floor((a - 1) / fanout);
    while (depth[a] < level && a * fanout + 1 < n) a = a * fanout + 1;
    return a;
  };
  return Array.from({ length: n }, (_, i) => anchor(i));
}

function main(): void {
  const i = process.argv.indexOf("--state-dir");
  const procDir = i >= 0 ? process.argv[i + 1] : undefined;
  if (!process.argv.includes("--tree") || !procDir || !path.isAbsolute(procDir)) {
    console.error("usage: tree-host --tree --state-dir <absolute dir> (benchmark only), launch payloads on stdin");
    process.exit(2);
  }
  const log = (m: string) => console.error(`${new Date().toISOString()} ${m}`);
  const nodes = new Map<number, TreeNode>();
  let hosted = 0;
  const procLinks = new Map<string, ProcessLink>();
  // One HTTPS server (one TLS context) per host address in this process; each agent keeps its own listening socket and port.
  const shared = new Map<string, https.Server>();
  const routes = new Map<number, http.RequestListener>();
  let placement: string[] | undefined;
  let myProcess: string | undefined;

  // One process per namespace host (the controller placed the agents so, with processOf): the agents of a host are this process's.
  const place = (p: TreePayload): string[] => {
    placement ??= p.hosts.map((h) => h.netns ?? h.address);
    return placement;
  };

  const launcher: ChildLauncher = (child, payload) => {
    const owner = place(payload)[child];
    if (owner === myProcess) return inProcess(child, payload);
    let link = procLinks.get(owner);
    if (!link) {
      const dir = path.join(payload.clusterDir, `proc-${child}`);
      const cmd = launchCommand(payload.hosts[child], treeHostArgv(dir));
      link = new ProcessLink(cmd, `${dir}.log`);
      procLinks.set(owner, link);
    }
    return link.launch(child, payload);
  };

  /** An agent started in this process: its link is a pair of callbacks. */
  const inProcess = (child: number, payload: TreePayload): ChildLink => {
    const msg: ((m: UpMessage) => void)[] = [];
    const gone: ((why: string) => void)[] = [];
    let released = false;
    void host(payload, (m) => setImmediate(() => !released && msg.forEach((f) => f(m)))).catch((err: Error) => gone.forEach((f) => f(err.message)));
    return {
      onMessage: (cb) => msg.push(cb),
      onGone: (cb) => gone.push(cb),
      send: (m) => setImmediate(() => nodes.get(child)?.onDown(m)),
      release: () => (released = true),
      abort: async (reason) => {
        released = true;
        await nodes.get(child)?.endWithSubtree(reason);
      },
    };
  };

  /** Hosts one agent here: a real Agent, its TLS listener on its own port, its tree node. */
  const host = async (p: TreePayload, up: (m: UpMessage) => void): Promise<void> => {
    myProcess ??= place(p)[p.self];
    hosted++;
    const stateDir = hostStateDir(p.clusterDir, p.self);
    fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    const h = p.hosts[p.self];
    const agent = new Agent({ stateDir, clusterKey: p.clusterKey, images: new ImageStore(p.imageStore), policy: permissivePolicy });
    await agent.load();
    const node: TreeNode = new TreeNode({
      payload: p,
      pid: process.pid,
      ppid: process.ppid,
      stateDir,
      localUrl: "",
      up,
      launch: launcher,
      end: async () => {
        agent.close();
        listener.close();
        routes.delete(h.port);
        for (const s of conns) s.destroy();
        fs.rmSync(stateDir, { recursive: true, force: true });
        nodes.delete(p.self);
        if (--hosted === 0) process.exit(0);
      },
      log: () => undefined,
    });
    nodes.set(p.self, node);
    const creds = p.certs[h.address];
    let server = shared.get(h.address);
    if (!server) {
      server = createSharedTlsServer({ cert: creds.cert, key: creds.key }, (port) => routes.get(port));
      shared.set(h.address, server);
    }
    const tls = server;
    routes.set(
      h.port,
      requestListener(agent, {
        token: p.token,
        clusterKey: p.clusterKey,
        policy: () => ({ doc: permissivePolicy(), source: "(bench)" }),
        onShutdown: () => void node.endWithSubtree("shutdown"),
        tree: () => node.view(),
      }),
    );
    // The agent's own listening socket on its port; its connections are TLS of the shared server.
    const conns = new Set<net.Socket>();
    const listener = net.createServer((sock) => {
      conns.add(sock);
      sock.once("close", () => conns.delete(sock));
      tls.emit("connection", sock);
    });
    listener.maxConnections = SERVER_LIMITS.maxConnections;
    await new Promise<void>((resolve, reject) => {
      listener.once("error", reject);
      listener.listen(h.port, h.address, () => resolve());
    });
    void node.start();
  };

  const pipe: ParentPipe = new ParentPipe(process.stdin, process.stdout, {
    launch: (p) =>
      void host(p, (m) => pipe.send(m)).catch((err: Error) => {
        log(`host ${p.self}: ${err.message}`);
        pipe.send({ t: "failed", host: p.self, failedHost: p.self, reason: err.message });
      }),
    down: (m: DownMessage) => nodes.get(m.t === "launch" ? -1 : m.host)?.onDown(m),
    gone: (why) => {
      // The agents whose parent is outside this process lose it; the others follow their parents here.
      const tops = [...nodes.values()].filter((n) => {
        const par = n.env.payload.parent;
        return par === null || placement?.[par] !== myProcess;
      });
      if (!tops.length && hosted === 0) process.exit(0);
      for (const n of tops) n.onParentGone(why);
    },
  });
}

if (require.main === module) main();
