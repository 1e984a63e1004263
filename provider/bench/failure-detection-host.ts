// BENCHMARK ONLY (`npm run bench -- --only detection`, provider/bench/failure-detection.ts):
// one namespace host's process running many heartbeat agents at once, because
// 1,024 agent daemons do not fit in memory. Each agent here is the real
// failure detection of provider/agent/heartbeat.ts (ClusterMonitor: watches,
// beat stream, report routing, the coordinator's record), behind its own
// HTTPS listener (its own port on the host's address, TLS 1.3, the host's
// certificate from the cluster CA, the cluster token checked by the agent's
// own authenticate()). What it does not have is the rest of an agent (VMs,
// images, policy): those routes answer 404.
//
//   ip netns exec <ns> node dist/provider/bench/failure-detection-host.js <config.json>
// Commands on stdin, one JSON per line: {"cmd":"start"} starts every agent's
// heartbeats; {"cmd":"crash","agent":i} ends agent i as SIGKILL would (its
// listener and every socket closed at once, nothing more sent), answering
// {"crashed":i,"at":<ms>}; {"cmd":"stats"} answers the summed counters, this
// process's CPU time (µs) and its event loop's delay since the last stats.
// Events on stdout: {"ready":true} once every listener serves.
import * as fs from "fs";
import * as https from "https";
import type * as net from "net";
import { monitorEventLoopDelay } from "perf_hooks";
import * as readline from "readline";
import { ClusterMonitor } from "../agent/heartbeat";
import type { Membership } from "../agent/membership";
import { authenticate } from "../agent/server";
import { AgentRefusal } from "../agent/protocol";

export interface BenchHostConfig {
  address: string;
  /** The cluster's agents on this host: host index and port. */
  agents: { host: number; port: number }[];
  /** Every agent's URL, index = host. */
  urls: string[];
  token: string;
  clusterKey: string;
  caFile: string;
  certFile: string;
  keyFile: string;
  periodMs: number;
  suspectMs: number;
  startupGraceMs: number;
}

interface Hosted {
  host: number;
  monitor: ClusterMonitor;
  server: https.Server;
  sockets: Set<net.Socket>;
}

function send(o: unknown): void {
  process.stdout.write(JSON.stringify(o) + "\n");
}

async function main(): Promise<void> {
  const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8")) as BenchHostConfig;
  const ca = fs.readFileSync(cfg.caFile, "utf8");
  const cert = fs.readFileSync(cfg.certFile);
  const key = fs.readFileSync(cfg.keyFile);
  const hosted: Hosted[] = [];
  for (const a of cfg.agents) {
    const membership: Membership = { self: a.host, fanout: 2, parent: null, children: [], agents: cfg.urls.map((url, host) => ({ host, url })) };
    const monitor = new ClusterMonitor({
      membership,
      token: cfg.token,
      ca,
      periodMs: cfg.periodMs,
      suspectMs: cfg.suspectMs,
      startupGraceMs: cfg.startupGraceMs,
      handshakeTimeoutMs: 60000,
    });
    const sockets = new Set<net.Socket>();
    const server = https.createServer({ cert, key, minVersion: "TLSv1.3" }, (req, res) => {
      const url = new URL(req.url ?? "/", "http://agent");
      const answer = async (): Promise<[number, unknown]> => {
        authenticate(req.headers.authorization, cfg.token, cfg.clusterKey);
        return (await monitor.handle(req, res, url)) ?? [404, { error: `no such endpoint ${url.pathname} (benchmark host)` }];
      };
      answer().then(
        ([status, body]) => {
          if (res.headersSent) return;
          res.writeHead(status, { "Content-Type": "application/json" });
          res.end(JSON.stringify(body));
        },
        (err: Error) => {
          if (res.headersSent) return;
          res.writeHead(err instanceof AgentRefusal ? err.status : 500, { "Content-Type": "application/json" });
          res.end(JSON.stringify({ error: err.message }));
        },
      );
    });
    server.on("secureConnection", (s: net.Socket) => {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
    });
    server.on("tlsClientError", () => undefined);
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(a.port, cfg.address, () => resolve());
    });
    hosted.push({ host: a.host, monitor, server, sockets });
  }
  // How late this process's event loop ran (a starved process reads beats late): max and p99 between two stats.
  const loopDelay = monitorEventLoopDelay({ resolution: 20 });
  loopDelay.enable();
  send({ ready: true, agents: hosted.length });
  const rl = readline.createInterface({ input: process.stdin });
  rl.on("line", (line) => {
    const m = JSON.parse(line) as { cmd: string; agent?: number };
    if (m.cmd === "start") {
      // All at once: the watches' handshakes queue per process in heartbeat.ts (MAX_CONNECTING), which paces them to the CPU.
      for (const h of hosted) h.monitor.start();
      send({ started: true });
    } else if (m.cmd === "crash") {
      const h = hosted.find((x) => x.host === m.agent);
      if (!h) return send({ error: `no agent ${m.agent} here` });
      const at = Date.now();
      h.monitor.stop();
      h.server.close();
      for (const s of h.sockets) s.destroy();
      send({ crashed: h.host, at });
    } else if (m.cmd === "stats") {
      const sum = { beatsSent: 0, beatsReceived: 0, payloadBytesSent: 0, payloadBytesReceived: 0, suspicions: 0, handshakes: 0, heardAll: 0 };
      for (const h of hosted) {
        for (const k of ["beatsSent", "beatsReceived", "payloadBytesSent", "payloadBytesReceived", "suspicions", "handshakes"] as const)
          sum[k] += h.monitor.stats[k];
        if (h.monitor.allHeard()) sum.heardAll++;
      }
      const cpu = process.cpuUsage();
      const delay = { loopDelayMaxMs: loopDelay.max / 1e6, loopDelayP99Ms: loopDelay.percentile(99) / 1e6 };
      loopDelay.reset();
      send({ stats: { ...sum, cpuMicros: cpu.user + cpu.system, ...delay } });
    }
  });
  rl.on("close", () => process.exit(0));
}

main().catch((err: Error) => {
  process.stderr.write(`benchmark host failed: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
