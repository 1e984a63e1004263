import * as crypto from "crypto";
import * as http from "http";
import { Agent } from "./agent";
import { checkVmSpec, VM_NAME_PATTERN, VmSpec } from "./protocol";

const MAX_BODY_BYTES = 1024 * 1024;

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function tokenMatches(header: string | undefined, token: string): boolean {
  const m = /^Bearer (.+)$/.exec(header ?? "");
  if (!m) return false;
  const a = crypto.createHash("sha256").update(m[1]).digest();
  const b = crypto.createHash("sha256").update(token).digest();
  return crypto.timingSafeEqual(a, b);
}

function readBody(req: http.IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        reject(new HttpError(413, `body: expected at most ${MAX_BODY_BYTES} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString("utf8");
      try {
        resolve(JSON.parse(text));
      } catch (err) {
        reject(new HttpError(400, `body: expected JSON (${(err as Error).message})`));
      }
    });
    req.on("error", reject);
  });
}

/** The agent's HTTP API (see protocol.ts); one bad request never affects another. */
export function createServer(agent: Agent, token: string, onShutdown: () => void): http.Server {
  const handle = async (req: http.IncomingMessage): Promise<[number, unknown]> => {
    const url = new URL(req.url ?? "/", "http://agent");
    if (url.pathname === "/healthz" && req.method === "GET") return [200, { ok: true, pid: process.pid }];
    if (!url.pathname.startsWith("/v1/")) throw new HttpError(404, `no such endpoint ${url.pathname}`);
    if (!tokenMatches(req.headers.authorization, token)) throw new HttpError(401, "missing or wrong bearer token");

    if (url.pathname === "/v1/vms") {
      if (req.method !== "GET") throw new HttpError(405, `${req.method} is not allowed on /v1/vms`);
      return [200, { vms: agent.list() }];
    }
    if (url.pathname === "/v1/shutdown") {
      if (req.method !== "POST") throw new HttpError(405, `${req.method} is not allowed on /v1/shutdown`);
      await agent.shutdown();
      setImmediate(onShutdown);
      return [200, { ok: true }];
    }
    const m = /^\/v1\/vms\/([^/]+)(\/incoming|\/migrate)?$/.exec(url.pathname);
    if (!m) throw new HttpError(404, `no such endpoint ${url.pathname}`);
    const name = decodeURIComponent(m[1]);
    if (!VM_NAME_PATTERN.test(name)) throw new HttpError(400, `name: expected a lowercase DNS label, found ${JSON.stringify(name)}`);
    if (m[2]) {
      if (req.method !== "POST") throw new HttpError(405, `${req.method} is not allowed on ${url.pathname}`);
      const body = await readBody(req);
      try {
        if (m[2] === "/incoming") {
          const problem = checkVmSpec(body);
          if (problem) throw new HttpError(400, problem);
          return [200, await agent.incoming(name, body as VmSpec)];
        }
        const target = (body as { target?: unknown })?.target;
        if (typeof target !== "string" || !/^tcp:127\.0\.0\.1:[0-9]{1,5}$/.test(target))
          throw new HttpError(400, "target: expected tcp:127.0.0.1:<port> (a migration target on this machine)");
        return [200, await agent.migrate(name, target)];
      } catch (err) {
        if (err instanceof HttpError) throw err;
        const msg = (err as Error).message;
        throw new HttpError(/^(config|hypervisor)/.test(msg) ? 400 : /^conflict/.test(msg) ? 409 : /^not found/.test(msg) ? 404 : 500, msg);
      }
    }
    switch (req.method) {
      case "GET": {
        const vm = agent.get(name);
        if (!vm) throw new HttpError(404, `no VM named ${name}`);
        return [200, vm];
      }
      case "PUT": {
        const body = await readBody(req);
        const problem = checkVmSpec(body);
        if (problem) throw new HttpError(400, problem);
        try {
          return [200, await agent.put(name, body as VmSpec)];
        } catch (err) {
          const msg = (err as Error).message;
          // A config the driver refuses is the caller's mistake; anything else is ours.
          throw new HttpError(/^config/.test(msg) ? 400 : 500, msg);
        }
      }
      case "DELETE":
        return (await agent.delete(name)) ? [200, { deleted: name }] : [404, { error: `no VM named ${name}` }];
      default:
        throw new HttpError(405, `${req.method} is not allowed on ${url.pathname}`);
    }
  };

  return http.createServer((req, res) => {
    handle(req).then(
      ([status, body]) => send(res, status, body),
      (err: unknown) => {
        const status = err instanceof HttpError ? err.status : 500;
        const headers: http.OutgoingHttpHeaders = status === 401 ? { "WWW-Authenticate": 'Bearer realm="vse-agent"' } : {};
        send(res, status, { error: (err as Error).message }, headers);
      },
    );
  });
}

function send(res: http.ServerResponse, status: number, body: unknown, headers: http.OutgoingHttpHeaders = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text), ...headers });
  res.end(text);
}
