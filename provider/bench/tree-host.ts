// BENCHMARK ONLY (npm run bench -- --only bootstrap, provider/bench/bootstrap.ts):
// a process that hosts many tree agents on one namespace host, so that 1,024
// agents fit on this machine. Each hosted agent is a real Agent with its own
// TLS listener on its own port of the host's address, and runs the same
// bootstrap code as a daemon agent (agent/tree.ts TreeNode): it launches its
// children, does the TLS handshake with each over its socket, checks its
// parent over TLS, reports up. What differs: a child placed in the same
// process is started in-process (a new Agent and listener, no process
// spawn), and agents serve no unix socket.
//
//   node dist/provider/bench/tree-host.js --tree --state-dir <clusterDir>/proc-<anchor>
// with launch payloads (agent/tree.ts) on stdin, as a daemon agent gets its one.
import * as fs from "fs";
import * as path from "path";
import type * as https from "https";
import { Agent } from "../agent/agent";
import { ImageStore } from "../agent/image-store";
import { createTlsServer } from "../agent/server";
import { ChildLauncher, ChildLink, DownMessage, hostStateDir, ParentPipe, ProcessLink, TreeNode, TreePayload, UpMessage } from "../agent/tree";
import { launchCommand } from "../allocation/launcher";
import { PERMISSIVE_SITE_POLICY } from "../model/site-policy";

export const TREE_HOST_MAIN = __filename.endsWith(".ts") ? path.resolve(__dirname, "..", "..", "dist", "provider", "bench", "tree-host.js") : __filename;

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
      const cmd = launchCommand(payload.hosts[child], [process.execPath, TREE_HOST_MAIN, "--tree", "--state-dir", dir]);
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
    const agent = new Agent({ stateDir, clusterKey: p.clusterKey, images: new ImageStore(p.imageStore), policy: () => PERMISSIVE_SITE_POLICY });
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
        server.close();
        server.closeAllConnections();
        fs.rmSync(stateDir, { recursive: true, force: true });
        nodes.delete(p.self);
        if (--hosted === 0) process.exit(0);
      },
      log: () => undefined,
    });
    nodes.set(p.self, node);
    const creds = p.certs[h.address];
    const server: https.Server = createTlsServer(
      agent,
      {
        token: p.token,
        clusterKey: p.clusterKey,
        policy: () => ({ doc: PERMISSIVE_SITE_POLICY, source: "(bench)" }),
        onShutdown: () => void node.endWithSubtree("shutdown"),
        tree: () => node.view(),
      },
      { cert: creds.cert, key: creds.key },
    );
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(h.port, h.address, () => resolve());
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
