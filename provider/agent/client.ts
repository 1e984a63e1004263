import * as fs from "fs";
import * as http from "http";
import * as path from "path";
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

/** A small client for one node agent's API (unix:<socket path>); every /v1 call carries the bearer token, sent only after the socket was verified. */
export class AgentClient {
  private readonly socket: string;

  constructor(
    readonly url: string,
    private readonly token: string,
  ) {
    const m = /^unix:(\/.+)$/.exec(url);
    if (!m) throw new AgentError(0, `agent ${url}: expected unix:<absolute socket path>`);
    this.socket = m[1];
  }

  request<T>(method: string, pathname: string, body?: unknown, timeoutMs = 120000): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise((resolve, reject) => {
      try {
        verifyAgentSocket(this.socket);
      } catch (err) {
        reject(err);
        return;
      }
      const req = http.request(
        {
          socketPath: this.socket,
          path: pathname,
          method,
          timeout: timeoutMs,
          headers: {
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
    });
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
