import * as crypto from "crypto";
import * as http from "http";
import * as https from "https";
import type { Duplex } from "stream";
import type { SitePolicy } from "../model/types.generated";
import { Agent } from "./agent";
import { lifecycleRoute } from "./checkpoint";
import type { StagingService } from "./staging";
import { treeRoute } from "./tree";
import { AgentRefusal, checkVmSpec, controlCharacter, TOKEN_PATTERN, VM_NAME_PATTERN, VmSpec } from "./protocol";

export const MAX_BODY_BYTES = 256 * 1024;
/** Limits on the transport: a slow or greedy client cannot hold the agent. */
export const SERVER_LIMITS = {
  maxConnections: 32,
  headersTimeoutMs: 5000,
  /** Receiving a whole request (headers and body); answers may take longer (a migration). */
  requestTimeoutMs: 10000,
  keepAliveTimeoutMs: 5000,
  /** A socket with no traffic at all for this long is closed; longer than any operation. */
  idleTimeoutMs: 180000,
};

export interface ServerOptions {
  token: string;
  clusterKey: string;
  policy: () => { doc: SitePolicy; source: string };
  onShutdown: () => void;
  /** Image staging (staging.ts): the /v1/staging/ routes, with their own body limits. */
  staging?: StagingService;
  /** The /v1/cluster/ routes (failure detection and recovery, agent/heartbeat.ts), when the agent has a membership. */
  cluster?: (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => Promise<[number, unknown]>;
  /** An agent launched over the bootstrap tree (agent/tree.ts): what GET /v1/tree answers. */
  tree?: () => unknown;
}

function sha(text: string): Buffer {
  return crypto.createHash("sha256").update(text).digest();
}

/** 401 for a missing or wrong token, 403 for a token of another cluster; each with its own message. */
export function authenticate(header: string | undefined, token: string, clusterKey: string): void {
  if (header === undefined || header === "") throw new AgentRefusal(401, "missing bearer token: send Authorization: Bearer <the cluster's token>");
  const m = /^Bearer ([!-~]{1,200})$/.exec(header);
  if (!m) throw new AgentRefusal(401, "malformed Authorization header: expected Bearer <token>");
  if (crypto.timingSafeEqual(sha(m[1]), sha(token))) return;
  const t = TOKEN_PATTERN.exec(m[1]);
  if (t && t[1] !== clusterKey) throw new AgentRefusal(403, `this token belongs to cluster ${t[1]}; this agent serves cluster ${clusterKey} only`);
  throw new AgentRefusal(401, "wrong bearer token for this cluster");
}

function readBody(req: http.IncomingMessage): Promise<unknown> {
  const declared = Number(req.headers["content-length"] ?? "0");
  if (declared > MAX_BODY_BYTES) {
    req.resume();
    return Promise.reject(new AgentRefusal(413, `body: expected at most ${MAX_BODY_BYTES} bytes, Content-Length says ${declared}`));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        reject(new AgentRefusal(413, `body: expected at most ${MAX_BODY_BYTES} bytes`));
        req.removeAllListeners("data");
        req.resume();
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString("utf8");
      try {
        resolve(JSON.parse(text));
      } catch (err) {
        reject(new AgentRefusal(400, `body: expected JSON (${(err as Error).message})`));
      }
    });
    req.on("error", reject);
  });
}

function allow(req: http.IncomingMessage, method: string, pathname: string): void {
  if (req.method !== method) throw new AgentRefusal(405, `${req.method} is not allowed on ${pathname}`);
}

/** The agent's HTTP API (see protocol.ts); one bad request never affects another. */
export function createServer(agent: Agent, o: ServerOptions): http.Server {
  return limit(http.createServer(HTTP_OPTIONS, requestListener(agent, o)));
}

/** What a TLS listener is given: the host's certificate (PEM, chain allowed) and its key. */
export interface TlsCredentials {
  cert: string | Buffer;
  key: string | Buffer;
}

/** TLS handshakes must finish within this, or the connection is closed. */
export const TLS_HANDSHAKE_TIMEOUT_MS = 5000;

/**
 * The same API over HTTPS, for agents that serve beyond this machine (issue 9):
 * the host's certificate from the cluster's CA, TLS 1.3 only, the same limits.
 * Clients pin the cluster's CA and the host's address before they send the token.
 */
export function createTlsServer(agent: Agent, o: ServerOptions, creds: TlsCredentials): https.Server {
  const server = limit(
    https.createServer(
      { ...HTTP_OPTIONS, cert: creds.cert, key: creds.key, minVersion: "TLSv1.3", handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS },
      requestListener(agent, o),
    ),
  );
  // Image staging streams (staging.ts): an upgraded connection is outside the request timeouts, so only
  // the token-checked staging stream may upgrade; anything else is answered and closed.
  server.on("upgrade", (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    if (!o.staging) socket.destroy();
    else o.staging.stream(req, socket, head, () => authenticate(req.headers.authorization, o.token, o.clusterKey));
  });
  return server;
}

const HTTP_OPTIONS: http.ServerOptions = {
  headersTimeout: SERVER_LIMITS.headersTimeoutMs,
  requestTimeout: SERVER_LIMITS.requestTimeoutMs,
  keepAliveTimeout: SERVER_LIMITS.keepAliveTimeoutMs,
  // Check the timeouts above every second, not every 30 s (Node's default).
  connectionsCheckingInterval: 1000,
  maxHeaderSize: 16 * 1024,
};

function limit<S extends http.Server>(server: S): S {
  server.maxConnections = SERVER_LIMITS.maxConnections;
  server.setTimeout(SERVER_LIMITS.idleTimeoutMs);
  return server;
}

/**
 * One HTTPS server, so one TLS context for a host's certificate, for many agents of that host in one process
 * (benchmark only: bench/tree-host.ts). It does not listen itself: each agent's own listening socket hands it its
 * connections (server.emit("connection", socket)), and a request goes to the agent whose port it came in on.
 * TLS and HTTP settings are createTlsServer's.
 */
export function createSharedTlsServer(creds: TlsCredentials, route: (port: number) => http.RequestListener | undefined): https.Server {
  const server = https.createServer(
    { ...HTTP_OPTIONS, cert: creds.cert, key: creds.key, minVersion: "TLSv1.3", handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS },
    (req, res) => {
      const listener = route(req.socket.localPort ?? 0);
      if (listener) listener(req, res);
      else send(res, 404, { error: `no agent serves port ${req.socket.localPort}` });
    },
  );
  server.setTimeout(SERVER_LIMITS.idleTimeoutMs);
  return server;
}

export function requestListener(agent: Agent, o: ServerOptions): http.RequestListener {
  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<[number, unknown]> => {
    const raw = req.url ?? "/";
    if (raw.length > 512 || controlCharacter(decodeURIComponentSafe(raw))) throw new AgentRefusal(400, "url: expected at most 512 printable characters");
    const url = new URL(raw, "http://agent");
    if (url.pathname === "/healthz") {
      allow(req, "GET", url.pathname);
      return [200, { ok: true, pid: process.pid, clusterKey: o.clusterKey, ...(agent.persistError ? { persistError: agent.persistError } : {}) }];
    }
    if (url.pathname === "/v1/policy") {
      allow(req, "GET", url.pathname);
      const p = o.policy();
      return [200, { policy: p.doc, source: p.source }];
    }
    if (!url.pathname.startsWith("/v1/")) throw new AgentRefusal(404, `no such endpoint ${url.pathname}`);
    authenticate(req.headers.authorization, o.token, o.clusterKey);
    if (url.pathname.startsWith("/v1/staging/") && o.staging) return o.staging.handle(req, url.pathname);
    if (url.pathname.startsWith("/v1/cluster/") && o.cluster) return o.cluster(req, res, url);
    if (url.pathname === "/v1/tree") return treeRoute(o.tree, req.method);

    if (url.pathname === "/v1/vms") {
      allow(req, "GET", url.pathname);
      return [200, { vms: await agent.list() }];
    }
    const lifecycle = await lifecycleRoute(agent, req, url, () => readBody(req));
    if (lifecycle) return lifecycle;
    if (url.pathname === "/v1/shutdown") {
      allow(req, "POST", url.pathname);
      await agent.shutdown();
      setImmediate(o.onShutdown);
      return [200, { ok: true }];
    }
    const m = /^\/v1\/vms\/([^/]+)(\/incoming|\/migrate)?$/.exec(url.pathname);
    if (!m) throw new AgentRefusal(404, `no such endpoint ${url.pathname}`);
    const name = decodeURIComponentSafe(m[1]);
    if (!VM_NAME_PATTERN.test(name)) throw new AgentRefusal(400, `name: expected a lowercase DNS label, found ${JSON.stringify(name.slice(0, 100))}`);
    if (m[2] === "/incoming") {
      allow(req, "POST", url.pathname);
      const body = await readBody(req);
      const problem = checkVmSpec(body);
      if (problem) throw new AgentRefusal(400, problem);
      return [200, await agent.incoming(name, body as VmSpec)];
    }
    if (m[2] === "/migrate") {
      allow(req, "POST", url.pathname);
      const body = (await readBody(req)) as { target?: unknown } | null;
      if (typeof body !== "object" || body === null || Object.keys(body).some((k) => k !== "target") || typeof body.target !== "string")
        throw new AgentRefusal(400, "body: expected { target: string }");
      return [200, await agent.migrate(name, body.target)];
    }
    switch (req.method) {
      case "GET": {
        const vm = await agent.get(name);
        if (!vm) throw new AgentRefusal(404, `no VM named ${name}`);
        return [200, vm];
      }
      case "PUT": {
        const body = await readBody(req);
        const problem = checkVmSpec(body);
        if (problem) throw new AgentRefusal(400, problem);
        return [200, await agent.put(name, body as VmSpec)];
      }
      case "DELETE":
        return (await agent.delete(name)) ? [200, { deleted: name }] : [404, { error: `no VM named ${name}` }];
      default:
        throw new AgentRefusal(405, `${req.method} is not allowed on ${url.pathname}`);
    }
  };

  return (req, res) => {
    handle(req, res).then(
      ([status, body]) => send(res, status, body),
      (err: unknown) => {
        const status = err instanceof AgentRefusal ? err.status : 500;
        const headers: http.OutgoingHttpHeaders = status === 401 ? { "WWW-Authenticate": 'Bearer realm="vse-agent"' } : {};
        // A body not read to its end would stall the connection; close it after the answer instead.
        if (!req.complete) headers.Connection = "close";
        send(res, status, { error: (err as Error).message }, headers);
      },
    );
  };
}

function decodeURIComponentSafe(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw new AgentRefusal(400, "url: malformed percent-encoding");
  }
}

function send(res: http.ServerResponse, status: number, body: unknown, headers: http.OutgoingHttpHeaders = {}): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text), ...headers });
  res.end(text);
}
