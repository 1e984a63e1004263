// The node agent as a real daemon (dist/provider/agent/main.js) on 127.0.0.1:
// authentication, request validation, and that it keeps serving after bad requests.
import * as fs from "fs";
import * as http from "http";
import * as os from "os";
import * as path from "path";
import { AgentRecord, newToken, startLocalAgent, stopLocalAgent } from "../../provider/allocation/local";

let dir: string;
let token: string;
let agent: AgentRecord;

function raw(
  method: string,
  pathname: string,
  opts: { token?: string; body?: string } = {},
): Promise<{ status: number; body: { error?: string } & Record<string, unknown>; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.request(new URL(pathname, agent.url), { method, headers: opts.token ? { Authorization: `Bearer ${opts.token}` } : {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode!, body: JSON.parse(Buffer.concat(chunks).toString()), headers: res.headers }));
    });
    req.on("error", reject);
    if (opts.body !== undefined) req.write(opts.body);
    req.end();
  });
}

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-agent-"));
  token = newToken();
  agent = await startLocalAgent(path.join(dir, "host-0"), token, 0);
});

afterAll(async () => {
  await stopLocalAgent(agent, token);
  fs.rmSync(dir, { recursive: true, force: true });
});

test("a request without the token, or with a wrong one, gets 401", async () => {
  const none = await raw("GET", "/v1/vms");
  expect(none.status).toBe(401);
  expect(none.headers["www-authenticate"]).toMatch(/^Bearer/);
  expect(none.body.error).toMatch(/bearer token/);
  expect((await raw("GET", "/v1/vms", { token: newToken() })).status).toBe(401);
  expect((await raw("PUT", "/v1/vms/a", { token: "x".repeat(64), body: "{}" })).status).toBe(401);
});

test("malformed requests get 400 with a message naming the field, and the agent keeps serving", async () => {
  const cases: [string, string, string, RegExp][] = [
    ["PUT", "/v1/vms/vm-a", "{not json", /^body: expected JSON/],
    ["PUT", "/v1/vms/vm-a", "[]", /^body: expected a JSON object/],
    ["PUT", "/v1/vms/vm-a", JSON.stringify({ hypervisor: "xen" }), /^hypervisor: expected one of "qemu", "libvirt" \(what a node agent runs\), found "xen"/],
    ["PUT", "/v1/vms/vm-a", JSON.stringify({ hypervisor: "qemu", config: "" }), /^config: expected a non-empty string/],
    ["PUT", "/v1/vms/vm-a", JSON.stringify({ hypervisor: "qemu", config: "-name vm-a", markers: { begin: "a" }, stopGraceSeconds: 1 }), /^markers:/],
    [
      "PUT",
      "/v1/vms/vm-a",
      JSON.stringify({ hypervisor: "qemu", config: "-name vm-a", markers: { begin: "a", end: "b" }, stopGraceSeconds: 1, extra: 1 }),
      /^extra: unknown field/,
    ],
    [
      "PUT",
      "/v1/vms/vm-a",
      JSON.stringify({ hypervisor: "qemu", config: "-name vm-a\n-pidfile /tmp/x", markers: { begin: "a", end: "b" }, stopGraceSeconds: 1 }),
      /^config line 2: -pidfile is set by the node agent/,
    ],
    [
      "PUT",
      "/v1/vms/vm-a",
      JSON.stringify({ hypervisor: "qemu", config: "-name vm-a\nrm -rf /", markers: { begin: "a", end: "b" }, stopGraceSeconds: 1 }),
      /^config line 2: expected "-option \[value\]"/,
    ],
    [
      "PUT",
      "/v1/vms/vm-a",
      JSON.stringify({ hypervisor: "qemu", config: "-name other", markers: { begin: "a", end: "b" }, stopGraceSeconds: 1 }),
      /^config: -name must be the VM name/,
    ],
    [
      "PUT",
      "/v1/vms/vm-a",
      JSON.stringify({ hypervisor: "libvirt", config: "<domain><name>other</name></domain>", markers: { begin: "a", end: "b" }, stopGraceSeconds: 1 }),
      /^config: the domain's <name> must be the VM name "vm-a", found "other"/,
    ],
    [
      "PUT",
      "/v1/vms/vm-a",
      JSON.stringify({ hypervisor: "libvirt", config: "<domain><name>vm-a</name></domain>", markers: { begin: "a", end: "b" }, stopGraceSeconds: 1 }),
      /^config: expected a <serial type='file'>/,
    ],
    [
      "PUT",
      "/v1/vms/vm-a",
      JSON.stringify({ hypervisor: "qemu", config: "-name vm-a", markers: { begin: "a", end: "b" }, stopGraceSeconds: 1, afterJob: "later" }),
      /^afterJob: expected "stay-up" or "power-off"/,
    ],
    ["POST", "/v1/vms/vm-a/migrate", JSON.stringify({ target: "tcp:10.0.0.1:4444" }), /^target: expected tcp:127\.0\.0\.1:<port>/],
    [
      "POST",
      "/v1/vms/vm-a/incoming",
      JSON.stringify({
        hypervisor: "libvirt",
        config: "<domain><name>vm-a</name><devices><serial type='file'><source path='/tmp/c'/></serial></devices></domain>",
        markers: { begin: "a", end: "b" },
        stopGraceSeconds: 1,
      }),
      /^hypervisor: live migration needs "qemu"/,
    ],
    ["GET", "/v1/vms/Bad_Name", "", /^name: expected a lowercase DNS label/],
  ];
  for (const [method, p, body, message] of cases) {
    const res = await raw(method, p, { token, body: method === "GET" ? undefined : body });
    expect({ p, body, status: res.status }).toEqual({ p, body, status: 400 });
    expect(res.body.error).toMatch(message);
  }
  // Still serving, and nothing was created by the bad requests.
  const list = await raw("GET", "/v1/vms", { token });
  expect(list.status).toBe(200);
  expect(list.body.vms).toEqual([]);
  expect((await raw("GET", "/healthz")).status).toBe(200);
  expect((await raw("GET", "/v1/vms/vm-a", { token })).status).toBe(404);
  expect((await raw("POST", "/v1/vms", { token })).status).toBe(405);
});
