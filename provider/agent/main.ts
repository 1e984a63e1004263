// The node agent daemon:
//   node dist/provider/agent/main.js --state-dir DIR --token-file FILE --cluster-key KEY --image-store DIR [--policy FILE]
//   node dist/provider/agent/main.js --tree --state-dir DIR
//                          launched by its parent over the bootstrap tree (agent/tree.ts): token, certificate,
//                          key and the rest arrive as a launch payload on stdin, which stays the link to the parent
//     [--standin-guests]   benchmark only: run QEMU VMs as stand-in processes (provider/drivers/standin.ts), boot nothing
//     [--listen ADDR:PORT --tls-cert FILE --tls-key FILE] [--ca FILE]
//                          also serve the same API over HTTPS (TLS 1.3) on that IPv4 address only (never
//                          0.0.0.0), with the host's certificate from the cluster's CA (allocation/tls.ts);
//                          agent.json then names it as tlsUrl (https://ADDR:PORT); images can then be
//                          staged to it (agent/staging.ts), checked with the cluster CA: --ca FILE, or by
//                          default the last certificate of the --tls-cert chain
//     [--heartbeat-period-ms N --heartbeat-suspect-ms N]
//                          with --listen, once DIR/membership.json exists: heartbeats over the binomial graph
//                          and the recovery policy (agent/heartbeat.ts, agent/recovery.ts); defaults 500 and 2000
//     [--on-term keep-vms|stop-vms]
//                          what SIGTERM does to the VMs: keep-vms (default) leaves them running for a restarted
//                          agent to re-attach to; stop-vms powers every VM off through its driver first (agents
//                          launched by a resource manager: cancelling the allocation must leave nothing running)
// Serves on the unix socket DIR/agent.sock (DIR is made 0700), holds an
// exclusive lock on DIR while it lives, and writes DIR/agent.json atomically
// once it serves. The site policy is the file given (re-read when it changes)
// or, without one, the permissive local default.
import * as fs from "fs";
import type * as net from "net";
import * as path from "path";
import { Agent } from "./agent";
import { lockStateDir } from "./lock";
import { ImageStore } from "./image-store";
import { createServer, createTlsServer, ServerOptions } from "./server";
import { agentStaging } from "./staging";
import { readJson, writeFileAtomic } from "./state";
import { TOKEN_PATTERN } from "./protocol";
import { loadSitePolicy } from "../model/site-policy";
import { formatProblem, DefinitionError } from "../model/errors";
import type { Located } from "../model/load";
import type { SitePolicy } from "../model/types.generated";

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

/** --listen ADDR:PORT with its certificate and key, all three or none; the key must be private to its owner. */
function tlsListen(): { address: string; port: number; cert: Buffer; key: Buffer; certFile: string; keyFile: string } | undefined {
  const listen = arg("listen");
  const certFile = arg("tls-cert");
  const keyFile = arg("tls-key");
  if (listen === undefined && certFile === undefined && keyFile === undefined) return undefined;
  if (!listen || !certFile || !keyFile) fail("--listen, --tls-cert and --tls-key go together: an agent serves beyond this machine only over TLS");
  const m = /^([0-9.]{7,15}):([1-9][0-9]{0,4})$/.exec(listen);
  if (!m || Number(m[2]) > 65535) fail(`--listen: expected <IPv4 address>:<port 1-65535>, found ${JSON.stringify(listen)}`);
  const { checkListenAddress } = require("../allocation/tls") as typeof import("../allocation/tls");
  try {
    checkListenAddress(m[1]);
  } catch (err) {
    fail(`--listen: ${(err as Error).message}`);
  }
  try {
    const st = fs.statSync(keyFile);
    if ((st.mode & 0o077) !== 0) fail(`--tls-key ${keyFile}: expected a private file (mode 0600), found mode ${(st.mode & 0o777).toString(8)}`);
    return { address: m[1], port: Number(m[2]), cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile), certFile, keyFile };
  } catch (err) {
    fail(`--tls-cert/--tls-key: ${(err as Error).message}`);
  }
}

function fail(msg: string, code = 2): never {
  console.error(msg);
  process.exit(code);
}

/** The site policy, re-read whenever its file changes; a broken edit keeps the last good policy and says so. */
function policySource(file: string | undefined, log: (m: string) => void): () => { doc: SitePolicy; source: string } {
  let current: Located<SitePolicy> = loadSitePolicy({ file });
  let stamp = file ? fs.statSync(file).mtimeMs : 0;
  return () => {
    if (file) {
      const now = fs.existsSync(file) ? fs.statSync(file).mtimeMs : -1;
      if (now !== stamp) {
        stamp = now;
        try {
          current = loadSitePolicy({ file });
          log(`site policy reloaded from ${file}`);
        } catch (err) {
          log(
            `site policy ${file} is invalid, keeping the previous one: ${err instanceof DefinitionError ? err.problems.map(formatProblem).join("; ") : (err as Error).message}`,
          );
        }
      }
    }
    return { doc: current.doc, source: current.file };
  };
}

/** --tree: launched by a parent agent over the bootstrap tree (agent/tree.ts); the rest of its arguments and secrets come on stdin. */
async function treeSetup(): Promise<Awaited<ReturnType<typeof import("./tree").treeAgentSetup>>> {
  const dir = arg("state-dir");
  if (!dir || !path.isAbsolute(dir)) fail("--tree needs --state-dir <absolute path>");
  const t = await (require("./tree") as typeof import("./tree")).treeAgentSetup(dir);
  process.argv.push(...t.argv);
  return t;
}

async function main(): Promise<void> {
  const tree = process.argv.includes("--tree") ? await treeSetup() : undefined;
  const stateDir = arg("state-dir");
  const tokenFile = arg("token-file");
  const clusterKey = arg("cluster-key");
  const imageStore = arg("image-store");
  const policyFile = arg("policy");
  if (!stateDir || !tokenFile || !clusterKey || !imageStore)
    fail("usage: agent --state-dir DIR --token-file FILE --cluster-key KEY --image-store DIR [--policy FILE]");
  const tlsOpts = tlsListen();
  const onTerm = arg("on-term") ?? "keep-vms";
  if (onTerm !== "keep-vms" && onTerm !== "stop-vms") fail(`--on-term: expected keep-vms or stop-vms, found ${JSON.stringify(onTerm)}`);
  if (!/^[0-9a-f]{10}$/.test(clusterKey)) fail(`--cluster-key: expected 10 hex digits, found ${JSON.stringify(clusterKey)}`);
  const token = fs.readFileSync(tokenFile, "utf8").trim();
  const t = TOKEN_PATTERN.exec(token);
  if (!t || t[1] !== clusterKey) fail(`${tokenFile}: expected a token of cluster ${clusterKey} (vse1.${clusterKey}.<64 hex digits>)`);

  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  fs.chmodSync(stateDir, 0o700);
  const log = (msg: string) => console.log(`${new Date().toISOString()} ${msg}`);
  let lock: net.Server;
  try {
    lock = await lockStateDir(stateDir);
  } catch (err) {
    const other = readJson<{ pid?: number }>(path.join(stateDir, "agent.json"));
    fail(`another agent${other?.pid ? ` (pid ${other.pid})` : ""} holds ${stateDir}: ${(err as Error).message}`, 3);
  }
  let policy;
  try {
    policy = policySource(policyFile, log);
  } catch (err) {
    fail(`--policy ${policyFile}: ${err instanceof DefinitionError ? err.problems.map(formatProblem).join("\n") : (err as Error).message}`);
  }
  const standinGuests = process.argv.includes("--standin-guests");
  if (standinGuests) log("--standin-guests: BENCHMARK ONLY, QEMU VMs run as stand-in processes, nothing is booted");
  // An agent serving on a host's address binds its VMs' NICs there, and migrates between hosts over TLS with the same certificate.
  const hostOpts = tlsOpts ? { hostAddress: tlsOpts.address, tls: { port: tlsOpts.port, certFile: tlsOpts.certFile, keyFile: tlsOpts.keyFile, token } } : {};
  const agent = new Agent({ stateDir, clusterKey, images: new ImageStore(imageStore), policy: () => policy().doc, log, standinGuests, ...hostOpts });
  await agent.load();
  const socket = path.join(stateDir, "agent.sock");
  const infoFile = path.join(stateDir, "agent.json");
  const serverOptions: ServerOptions = {
    token,
    staging: agentStaging({ store: new ImageStore(imageStore), token, caFile: arg("ca"), chainPem: tlsOpts?.cert.toString("utf8"), log }),
    clusterKey,
    policy,
    ...(tree ? { tree: tree.view } : {}),
    onShutdown: () => {
      log("shutdown requested: every VM stopped, exiting");
      fs.rmSync(infoFile, { force: true });
      fs.rmSync(socket, { force: true });
      process.exit(0);
    },
  };
  const server = createServer(agent, serverOptions);
  const tlsServer = tlsOpts ? createTlsServer(agent, serverOptions, tlsOpts) : undefined;
  const tlsUrl = tlsOpts ? `https://${tlsOpts.address}:${tlsOpts.port}` : undefined;
  tlsServer?.on("error", (err) => fail(`--listen ${tlsOpts!.address}:${tlsOpts!.port}: ${err.message}`, 1));
  // We hold the lock: a socket file left here is a dead agent's.
  fs.rmSync(socket, { force: true });
  server.listen(socket, () => {
    fs.chmodSync(socket, 0o600);
    const ready = () => {
      writeFileAtomic(infoFile, JSON.stringify({ pid: process.pid, url: `unix:${socket}`, clusterKey, ...(tlsUrl ? { tlsUrl } : {}) }));
      log(`agent serving on ${socket}${tlsUrl ? ` and ${tlsUrl}` : ""} (cluster ${clusterKey}), policy ${policy().source}, images from ${imageStore}`);
      tree?.start({ localUrl: `unix:${socket}`, shutdown: () => agent.shutdown() });
    };
    if (tlsServer) tlsServer.listen(tlsOpts!.port, tlsOpts!.address, ready);
    else ready();
  });
  // Heartbeats and recovery (agent/heartbeat.ts, agent/recovery.ts) start once the tree bootstrap has written the membership.
  if (tlsOpts) {
    const { startFailureDetection } = require("./recovery") as typeof import("./recovery");
    const ms = (name: string) => {
      const v = arg(name);
      if (v !== undefined && !/^[1-9][0-9]{1,5}$/.test(v)) fail(`--${name}: expected milliseconds (10 to 999999), found ${JSON.stringify(v)}`);
      return v === undefined ? undefined : Number(v);
    };
    const periodMs = ms("heartbeat-period-ms");
    const suspectMs = ms("heartbeat-suspect-ms");
    startFailureDetection({
      stateDir,
      agent,
      token,
      certChain: tlsOpts.cert.toString("utf8"),
      serverOptions,
      log,
      exit: serverOptions.onShutdown,
      periodMs,
      suspectMs,
    });
  }
  // SIGTERM ends the agent but not its VMs: a restarted agent re-attaches to them.
  // With --on-term stop-vms the allocation ends with the agent: its VMs are powered off first.
  let terminating = false;
  for (const sig of ["SIGTERM", "SIGINT"] as const) {
    process.on(sig, () => {
      if (onTerm === "stop-vms") {
        // A scheduler may signal again (Slurm: SIGCONT, SIGTERM, then SIGKILL after KillWait); one power-off runs.
        if (terminating) return;
        terminating = true;
        log(`${sig}: powering every VM off, then exiting`);
        server.close();
        tlsServer?.close();
        agent
          .powerOffAll()
          .then(
            () => log("every VM powered off and removed"),
            (err: Error) => log(`power-off incomplete: ${err.message}`),
          )
          .finally(() => {
            fs.rmSync(infoFile, { force: true });
            fs.rmSync(socket, { force: true });
            lock.close();
            process.exit(0);
          });
        return;
      }
      log(`${sig}: exiting, VMs keep running`);
      agent.close();
      server.close();
      tlsServer?.close();
      lock.close();
      process.exit(0);
    });
  }
}

main().catch((err: Error) => fail(`agent failed: ${err.stack ?? err.message}`, 1));
