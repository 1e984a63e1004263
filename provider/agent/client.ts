import * as crypto from "crypto";
import * as fs from "fs";
import * as http from "http";
import * as path from "path";
import * as tls from "tls";
import type { SitePolicy } from "../model/types.generated";
import type { VmSpec, VmView } from "./protocol";

export class AgentError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Checks who listens on an agent's unix socket before the token is sent: the
 * socket and its directory must belong to this user (or root) and the
 * directory must be private (0700), so only the agent's own user can have
 * bound it there.
 */
export function verifyAgentSocket(socket: string): void {
  const uid = process.getuid?.() ?? 0;
  const owned = (st: fs.Stats) => st.uid === uid || st.uid === 0;
  let dir: fs.Stats, sock: fs.Stats;
  try {
    dir = fs.lstatSync(path.dirname(socket));
    sock = fs.lstatSync(socket);
  } catch (err) {
    throw new AgentError(0, `agent unix:${socket} is unreachable: ${(err as Error).message}`);
  }
  if (!dir.isDirectory() || !owned(dir) || (dir.mode & 0o077) !== 0)
    throw new AgentError(
      0,
      `agent unix:${socket}: refusing to send the token, ${path.dirname(socket)} is not a private directory of this user (mode ${(dir.mode & 0o777).toString(8)}, uid ${dir.uid})`,
    );
  if (!sock.isSocket() || !owned(sock)) throw new AgentError(0, `agent unix:${socket}: refusing to send the token, it is not a socket of this user`);
}

/**
 * Where an agent serves: `unix:/abs/path` (a local agent's socket) or
 * `https://<ipv4>:<port>` (an agent on another host, issue 9; TLS with the
 * cluster's CA pinned). Nothing else: no host names, no wildcard address.
 */
export type AgentEndpoint = { kind: "unix"; socket: string } | { kind: "https"; address: string; port: number };

export function parseAgentUrl(url: string): AgentEndpoint {
  const u = /^unix:(\/.+)$/.exec(url);
  if (u) return { kind: "unix", socket: u[1] };
  const h = /^https:\/\/((?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}):([1-9][0-9]{0,4})$/.exec(url);
  if (h && h[1].split(".").every((o) => Number(o) <= 255) && Number(h[2]) <= 65535 && !h[1].startsWith("0.")) {
    return { kind: "https", address: h[1], port: Number(h[2]) };
  }
  throw new AgentError(0, `agent ${url}: expected unix:<absolute socket path> or https://<IPv4 address>:<port>`);
}

export interface AgentClientOptions {
  /** The cluster's CA certificate (PEM, exactly one CA certificate); required for https:// agents, the only root they are checked against. */
  ca?: string | Buffer;
}

// One client SecureContext per pinned CA in this process: building one per connection (what tls.connect does
// without it) cost more CPU than the handshake itself when 1,024 agents shared two cores (bench/bootstrap.ts).
const pinnedContexts = new Map<string, tls.SecureContext>();

function pinnedContext(ca: string | Buffer, caFingerprint: string): tls.SecureContext {
  const key = `${caFingerprint}\n${String(ca)}`;
  let c = pinnedContexts.get(key);
  if (!c) {
    if (pinnedContexts.size >= 16) pinnedContexts.clear();
    c = tls.createSecureContext({ ca, minVersion: "TLSv1.3" });
    pinnedContexts.set(key, c);
  }
  return c;
}

// TLS 1.3 session tickets, by pinned CA and endpoint, kept only from connections that passed the checks below:
// a repeated connection (a parent check, a watch that reconnects, a report's hop) resumes without certificates
// or signatures. Resuming proves the server holds the secret of that verified handshake, so the pin holds
// (node skips checkServerIdentity on a resumed session for that reason); a server that cannot resume (another
// process, restarted, an impostor) gets the full handshake and every check again.
const sessions = new Map<string, Buffer>();
const MAX_SESSIONS = 8192;

function keepSession(key: string, session: Buffer): void {
  sessions.delete(key);
  if (sessions.size >= MAX_SESSIONS) sessions.delete(sessions.keys().next().value as string);
  sessions.set(key, session);
}

/**
 * Connects to an https:// agent and resolves only once its certificate chains
 * to the pinned CA and names exactly this address (IP SAN); nothing is written
 * on the connection before that, so a token never reaches another server.
 */
export function connectPinned(address: string, port: number, ca: string | Buffer, caFingerprint: string, timeoutMs: number): Promise<tls.TLSSocket> {
  const url = `https://${address}:${port}`;
  const sessionKey = `${caFingerprint} ${address}:${port}`;
  const session = sessions.get(sessionKey);
  return new Promise((resolve, reject) => {
    let verified = false;
    let ticket: Buffer | undefined;
    const sock = tls.connect({
      host: address,
      port,
      secureContext: pinnedContext(ca, caFingerprint),
      ...(session ? { session } : {}),
      rejectUnauthorized: true,
      checkServerIdentity: (_host, cert) => {
        const wrongName = tls.checkServerIdentity(address, cert);
        if (wrongName) return wrongName;
        // The chain ends at the pinned CA itself, not merely at some CA of the same name.
        let top = cert as tls.DetailedPeerCertificate;
        for (let i = 0; i < 8 && top.issuerCertificate && top.issuerCertificate !== top; i++) top = top.issuerCertificate;
        if (top.fingerprint256 !== caFingerprint) return new Error(`the certificate does not chain to the cluster's CA (${caFingerprint})`);
        return undefined;
      },
    });
    const timer = setTimeout(() => sock.destroy(new Error(`no TLS handshake within ${timeoutMs} ms`)), timeoutMs);
    sock.on("session", (s: Buffer) => {
      if (verified) keepSession(sessionKey, s);
      else ticket = s;
    });
    sock.once("secureConnect", () => {
      clearTimeout(timer);
      if (!sock.authorized) {
        sock.destroy();
        reject(new AgentError(0, `agent ${url}: refusing to send the token, its certificate is not trusted: ${String(sock.authorizationError)}`));
        return;
      }
      verified = true;
      if (ticket) keepSession(sessionKey, ticket);
      sock.removeAllListeners("error");
      resolve(sock);
    });
    sock.once("error", (err) => {
      clearTimeout(timer);
      // A ticket that led to an error is not offered again.
      if (session && sessions.get(sessionKey) === session) sessions.delete(sessionKey);
      reject(new AgentError(0, `agent ${url}: refusing to send the token, TLS with the cluster's CA failed: ${err.message}`));
    });
  });
}

// CA certificates already checked, by PEM: a process makes a client per peer and per check (a bootstrap tree, the
// heartbeat graph), and parsing the same CA each time was a large part of a 1,024-agent bootstrap's CPU.
const checkedCas = new Map<string, string>();

/** The fingerprint of the one CA certificate in ca (PEM); throws, naming url, when it is not exactly one CA certificate. */
function checkedCa(url: string, ca: string | Buffer): string {
  const pem = String(ca);
  const known = checkedCas.get(pem);
  if (known) return known;
  let x: crypto.X509Certificate;
  try {
    x = new crypto.X509Certificate(ca);
  } catch (err) {
    throw new AgentError(0, `agent ${url}: ca: expected a PEM certificate (${(err as Error).message})`);
  }
  const count = pem.split("-----BEGIN CERTIFICATE-----").length - 1;
  if (!x.ca || count !== 1) throw new AgentError(0, `agent ${url}: ca: expected exactly one CA certificate, the cluster's`);
  if (checkedCas.size >= 16) checkedCas.clear();
  checkedCas.set(pem, x.fingerprint256);
  return x.fingerprint256;
}

/**
 * A small client for one node agent's API (unix:<socket path>, or
 * https://<ipv4>:<port> with the cluster's CA); every /v1 call carries the
 * bearer token, sent only after the socket (or the TLS peer) was verified.
 */
export class AgentClient {
  private readonly endpoint: AgentEndpoint;
  private readonly ca?: { pem: string | Buffer; fingerprint256: string };

  constructor(
    readonly url: string,
    private readonly token: string,
    opts: AgentClientOptions = {},
  ) {
    this.endpoint = parseAgentUrl(url);
    if (this.endpoint.kind === "https") {
      if (opts.ca === undefined) throw new AgentError(0, `agent ${url}: an https agent needs the cluster's CA certificate (ca option)`);
      this.ca = { pem: opts.ca, fingerprint256: checkedCa(url, opts.ca) };
    }
  }

  request<T>(method: string, pathname: string, body?: unknown, timeoutMs = 120000): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const endpoint = this.endpoint;
      if (endpoint.kind === "https") {
        connectPinned(endpoint.address, endpoint.port, this.ca!.pem, this.ca!.fingerprint256, Math.min(timeoutMs, 10000)).then(
          (sock) =>
            this.send(
              method,
              pathname,
              payload,
              timeoutMs,
              { createConnection: () => sock, headers: { Host: `${endpoint.address}:${endpoint.port}` } },
              resolve,
              reject,
            ),
          reject,
        );
        return;
      }
      try {
        verifyAgentSocket(endpoint.socket);
      } catch (err) {
        reject(err);
        return;
      }
      this.send(method, pathname, payload, timeoutMs, { socketPath: endpoint.socket, headers: {} }, resolve, reject);
    });
  }

  private send<T>(
    method: string,
    pathname: string,
    payload: string | undefined,
    timeoutMs: number,
    conn: Pick<http.RequestOptions, "socketPath" | "createConnection"> & { headers: http.OutgoingHttpHeaders },
    resolve: (v: T) => void,
    reject: (e: unknown) => void,
  ): void {
    const req = http.request(
      {
        ...(conn.socketPath ? { socketPath: conn.socketPath } : { createConnection: conn.createConnection }),
        path: pathname,
        method,
        timeout: timeoutMs,
        headers: {
          ...conn.headers,
          ...(pathname.startsWith("/v1/") && pathname !== "/v1/policy" ? { Authorization: `Bearer ${this.token}` } : {}),
          ...(payload ? { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(payload) } : {}),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let json: unknown;
          try {
            json = JSON.parse(text);
          } catch {
            json = { error: text };
          }
          if ((res.statusCode ?? 500) >= 400) {
            reject(
              new AgentError(res.statusCode ?? 500, `agent ${this.url}: ${method} ${pathname}: ${(json as { error?: string }).error ?? res.statusMessage}`),
            );
          } else {
            resolve(json as T);
          }
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error(`agent ${this.url}: ${method} ${pathname}: no answer within ${timeoutMs} ms`)));
    req.on("error", (err) => reject(new AgentError(0, `agent ${this.url} is unreachable: ${err.message}`)));
    if (payload) req.write(payload);
    req.end();
  }

  health(): Promise<{ ok: boolean; pid: number; clusterKey: string; persistError?: string }> {
    return this.request("GET", "/healthz", undefined, 3000);
  }

  /** The site policy this agent enforces. */
  policy(): Promise<{ policy: SitePolicy; source: string }> {
    return this.request("GET", "/v1/policy", undefined, 3000);
  }

  putVm(name: string, spec: VmSpec): Promise<VmView> {
    return this.request("PUT", `/v1/vms/${encodeURIComponent(name)}`, spec);
  }

  async getVm(name: string): Promise<VmView | undefined> {
    try {
      return await this.request<VmView>("GET", `/v1/vms/${encodeURIComponent(name)}`);
    } catch (err) {
      if (err instanceof AgentError && err.status === 404) return undefined;
      throw err;
    }
  }

  async deleteVm(name: string): Promise<void> {
    try {
      await this.request("DELETE", `/v1/vms/${encodeURIComponent(name)}`);
    } catch (err) {
      if (!(err instanceof AgentError && err.status === 404)) throw err;
    }
  }

  /** Starts the VM here as the target of a live migration; the view's observed.incoming says where to send it. */
  incoming(name: string, spec: VmSpec): Promise<VmView> {
    return this.request("POST", `/v1/vms/${encodeURIComponent(name)}/incoming`, spec);
  }

  /** Migrates the VM from this agent to target; resolves once it runs there and is gone here. */
  migrate(name: string, target: string): Promise<{ totalMs: number; downtimeMs: number }> {
    return this.request("POST", `/v1/vms/${encodeURIComponent(name)}/migrate`, { target });
  }

  shutdown(): Promise<unknown> {
    return this.request("POST", "/v1/shutdown", {});
  }
}
