// A real node agent (dist/provider/agent/main.js) for tests: its own cluster
// directory, image store and site policy in a temp dir, and a raw client that
// can send anything (the agent's own client only sends well-formed requests).
import * as fs from "fs";
import * as http from "http";
import * as os from "os";
import * as path from "path";
import { AgentClient } from "../../provider/agent/client";
import { newClusterToken, VmSpec, VmView } from "../../provider/agent/protocol";
import { AgentLaunch, AgentRecord, startLocalAgent, stopLocalAgent } from "../../provider/allocation/local";
import { CLUSTER_NETWORK_EXTRAS, clusterKey, clusterNetwork, nicsFor } from "../../provider/drivers/network";
import { buildImage, imageRef, markersFor } from "../../provider/image/busybox";
import type { EnvironmentModel, VmModel } from "../../provider/model/resolve";
import { renderVmConfig } from "../../provider/render/render";
import { processesUnder } from "./stack";

export interface TestCluster {
  dir: string;
  /** The cluster's directory: agents live in host-<n>/ under it. */
  clusterDir: string;
  cacheDir: string;
  key: string;
  launch: AgentLaunch;
  agents: AgentRecord[];
  start(host?: number): Promise<AgentRecord>;
  client(a?: AgentRecord): AgentClient;
  stop(): Promise<void>;
}

export function jobEnv(afterJob: "stay-up" | "power-off" = "stay-up", command = ["/bin/sh", "-c", "echo job-$((6*7))"]): EnvironmentModel {
  return { name: "t", base: "busybox", kernelArgs: [], job: { command, env: {}, afterJob, timeoutSeconds: 60 } };
}

/** A cluster directory with agents of its own; the policy file, when given, is what the agents enforce. */
export async function testCluster(opts: { name?: string; policyYaml?: string; cacheDir?: string } = {}): Promise<TestCluster> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-agent-"));
  const name = opts.name ?? "c";
  const key = clusterKey("test", path.basename(dir), name);
  const cacheDir = opts.cacheDir ?? path.join(dir, "cache");
  let policyFile: string | undefined;
  if (opts.policyYaml) {
    policyFile = path.join(dir, "site-policy.yaml");
    fs.writeFileSync(policyFile, opts.policyYaml);
  }
  const launch: AgentLaunch = { token: newClusterToken(key), clusterKey: key, imageStore: path.join(cacheDir, "images"), policyFile };
  const clusterDir = path.join(dir, "clusters", `${name}-${key}`);
  const agents: AgentRecord[] = [];
  const c: TestCluster = {
    dir,
    clusterDir,
    cacheDir,
    key,
    launch,
    agents,
    async start(host = 0) {
      const a = await startLocalAgent(path.join(clusterDir, `host-${host}`), launch, host);
      agents[host] = a;
      return a;
    },
    client: (a = agents[0]) => new AgentClient(a.url, launch.token),
    async stop() {
      for (const a of agents.filter(Boolean)) await stopLocalAgent(a, launch);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  return c;
}

/** A valid spec for VM name of the cluster, from the real template and a real image in the cluster's store. */
export function vmSpec(
  c: Pick<TestCluster, "key" | "cacheDir">,
  name: string,
  opts: { env?: EnvironmentModel; memoryMiB?: number; vcpus?: number; hypervisor?: "qemu" | "libvirt"; network?: boolean; index?: number } = {},
): VmSpec {
  const env = opts.env ?? jobEnv();
  const img = buildImage(env, c.cacheDir, undefined, opts.network ? CLUSTER_NETWORK_EXTRAS : undefined);
  // As the program's clusterBoot: a warm guest gets no per-VM arguments, a cold one on a network its address.
  const kernelArgs = env.warm ? ["vse.warm=1"] : opts.network ? [`vse.ip=${nicsFor(c.key, opts.index ?? 0)[0].ipv4}/16`] : [];
  const hypervisor = opts.hypervisor ?? "qemu";
  const vm: VmModel = {
    name,
    index: opts.index ?? 0,
    host: 0,
    profile: { name: "p", hypervisor, memoryMiB: opts.memoryMiB ?? 128, vcpus: opts.vcpus ?? 1, machine: "pc", accel: "tcg" },
  };
  return {
    hypervisor,
    config: renderVmConfig({
      cluster: "c",
      clusterKey: c.key,
      vm,
      image: imageRef(img.id),
      accel: "tcg",
      kernelArgs,
      network: opts.network ? clusterNetwork(c.key) : undefined,
    }),
    markers: markersFor(img.id),
    stopGraceSeconds: 0,
    afterJob: env.job.afterJob,
    // As the program's vmInputs: a warm image's job is handed over, not baked in.
    ...(env.warm ? { job: { command: env.job.command, env: env.job.env } } : {}),
  };
}

export async function waitForVm(client: AgentClient, name: string, done: (v: VmView) => boolean, ms = 90000): Promise<VmView> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await client.getVm(name);
    if (v && done(v)) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${name}: ${JSON.stringify(v?.observed)}\n${v?.consoleTail}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface RawAnswer {
  status: number;
  body: { error?: string } & Record<string, unknown>;
  headers: http.IncomingHttpHeaders;
}

/** Any request at all to an agent's socket: method, path, headers and body as given. */
export function rawRequest(
  a: AgentRecord,
  method: string,
  pathname: string,
  opts: { token?: string; body?: string | Buffer; headers?: http.OutgoingHttpHeaders } = {},
): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        socketPath: a.url.replace(/^unix:/, ""),
        path: pathname,
        method,
        headers: { ...(opts.token !== undefined ? { Authorization: `Bearer ${opts.token}` } : {}), ...opts.headers },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (ch) => chunks.push(ch));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString();
          let body: RawAnswer["body"];
          try {
            body = JSON.parse(text);
          } catch {
            body = { error: text };
          }
          resolve({ status: res.statusCode!, body, headers: res.headers });
        });
      },
    );
    req.on("error", reject);
    if (opts.body !== undefined) req.write(opts.body);
    req.end();
  });
}

/**
 * A test cluster for a whole test file, with agents on the given hosts: made in
 * beforeAll, and in afterAll stopped, checked to leave no process behind, removed.
 */
export function useTestCluster(hosts: number[] = [0]): () => TestCluster {
  let c: TestCluster;
  beforeAll(async () => {
    c = await testCluster();
    for (const h of hosts) await c.start(h);
  });
  afterAll(async () => {
    const dir = c.dir;
    await c.stop();
    expect(processesUnder(dir)).toEqual([]);
  });
  return () => c;
}
