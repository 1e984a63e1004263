import * as http from "http";
import type { VmSpec, VmView } from "./protocol";

export class AgentError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** A small client for one node agent's API; every call carries the bearer token. */
export class AgentClient {
  constructor(
    readonly url: string,
    private readonly token: string,
  ) {}

  request<T>(method: string, pathname: string, body?: unknown, timeoutMs = 120000): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const req = http.request(
        new URL(pathname, this.url),
        {
          method,
          timeout: timeoutMs,
          headers: {
            Authorization: `Bearer ${this.token}`,
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

  health(): Promise<{ ok: boolean; pid: number }> {
    return this.request("GET", "/healthz", undefined, 3000);
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
