// The bootstrap tree's arithmetic, the membership file's reader and writer,
// the launch payload's checks, and the benchmark's placement of agents into
// shared processes (each process a connected piece of the tree, so that only
// its top agent is a process launch).
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { checkMembership, membershipFile, readMembership, writeMembership } from "../../provider/agent/membership";
import { newClusterToken } from "../../provider/agent/protocol";
import { checkTreePayload, childPayload, subtreeHeight, subtreeOf, treeChildren, TreePayload, treeParent } from "../../provider/agent/tree";
import { launchCommand } from "../../provider/allocation/launcher";
import { processOf } from "../../provider/bench/tree-host";

test("children and parent agree, every host is in exactly one subtree of the root's children, height is the depth below", () => {
  for (const k of [1, 2, 3, 4, 64]) {
    for (const n of [1, 2, 7, 10, 64, 100]) {
      for (let i = 0; i < n; i++) for (const c of treeChildren(i, k, n)) expect(treeParent(c, k)).toBe(i);
      expect(subtreeOf(0, k, n).sort((a, b) => a - b)).toEqual(Array.from({ length: n }, (_, i) => i));
      const under = treeChildren(0, k, n).flatMap((c) => subtreeOf(c, k, n));
      expect(new Set(under).size).toBe(n - 1);
      let depth = 0;
      for (let i = n - 1; i > 0; i = treeParent(i, k)!) depth++;
      expect(subtreeHeight(0, k, n)).toBe(depth);
    }
  }
  expect(treeChildren(0, 2, 10)).toEqual([1, 2]);
  expect(treeChildren(4, 2, 10)).toEqual([9]);
  expect(treeChildren(3, 3, 10)).toEqual([]);
});

test("membership: written atomically, read back, and a malformed file is refused with its name", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-membership-"));
  try {
    expect(readMembership(dir)).toBeUndefined();
    const m = { self: 1, fanout: 2, parent: 0, children: [3, 4], agents: [0, 1, 2, 3, 4].map((host) => ({ host, url: `https://10.0.0.${host + 2}:7443` })) };
    writeMembership(dir, m);
    expect(readMembership(dir)).toEqual(m);
    expect(checkMembership({ ...m, children: [3, 4, 5] })).toMatch(/children/);
    expect(checkMembership({ ...m, parent: 9 })).toMatch(/parent/);
    expect(checkMembership({ ...m, extra: 1 })).toMatch(/unknown field extra/);
    expect(checkMembership({ ...m, agents: [{ host: 1, url: "https://10.0.0.2:7443" }] })).toMatch(/agents\[0\]/);
    expect(() => writeMembership(dir, { ...m, fanout: 0 })).toThrow(/fanout/);
    fs.writeFileSync(membershipFile(dir), JSON.stringify({ ...m, self: "1" }));
    expect(() => readMembership(dir)).toThrow(new RegExp(`${membershipFile(dir)}: self`));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a launch payload is checked before use, and a child is handed only its subtree's credentials", () => {
  const key = "0123456789";
  const hosts = Array.from({ length: 7 }, (_, i) => ({ address: `10.9.0.${i + 2}`, port: 7443, netns: `vse-t-h${i}` }));
  const certs = Object.fromEntries(hosts.map((h) => [h.address, { cert: `cert ${h.address}`, key: `key ${h.address}` }]));
  const p: TreePayload = {
    self: 0,
    fanout: 2,
    parent: null,
    hosts,
    clusterDir: "/tmp/c",
    token: newClusterToken(key),
    clusterKey: key,
    caPem: "-----BEGIN CERTIFICATE-----\n",
    certs,
    imageStore: "/tmp/i",
    timers: { linkTimeoutMs: 1000, parentCheckMs: 100, parentTimeoutMs: 500 },
    launchAt: 0,
  };
  expect(checkTreePayload(p)).toBeUndefined();
  const c = childPayload(p, 2);
  expect(checkTreePayload(c)).toBeUndefined();
  expect(c.parent).toBe(0);
  expect(Object.keys(c.certs).sort()).toEqual(["10.9.0.4", "10.9.0.7", "10.9.0.8"]);
  expect(checkTreePayload({ ...c, parent: 1 })).toMatch(/parent: host 2's parent in a 2-ary tree is 0/);
  expect(checkTreePayload({ ...p, hosts: hosts.map((h, i) => (i === 3 ? { ...h, address: "0.0.0.0" } : h)) })).toMatch(/hosts\[3\]: .*0\.0\.0\.0/);
  expect(checkTreePayload({ ...p, hosts: hosts.map((h, i) => (i === 1 ? { ...h, netns: "x; rm -rf /" } : h)) })).toMatch(/hosts\[1\]\.netns/);
  expect(checkTreePayload({ ...p, token: newClusterToken("abcdefabcd") })).toMatch(/token/);
  expect(checkTreePayload({ ...p, certs: {} })).toMatch(/no certificate for this host's address 10\.9\.0\.2/);
  expect(checkTreePayload({ ...p, clusterDir: "relative" })).toMatch(/clusterDir/);
  expect(checkTreePayload({ ...p, fanout: 65 })).toMatch(/fanout/);
});

test("launchers: a namespace host runs argv under ip netns exec, this machine runs it as it is; no empty argv", () => {
  expect(launchCommand({ address: "10.9.0.2", netns: "vse-t-h0" }, ["/usr/bin/node", "main.js", "--tree"])).toEqual({
    file: "ip",
    args: ["netns", "exec", "vse-t-h0", "/usr/bin/node", "main.js", "--tree"],
  });
  expect(launchCommand({ address: "10.9.0.2" }, ["/usr/bin/node", "main.js"])).toEqual({ file: "/usr/bin/node", args: ["main.js"] });
  expect(() => launchCommand({ address: "10.9.0.2" }, [])).toThrow(/argv/);
  expect(() => launchCommand({ address: "10.9.0.2", netns: "bad name" }, ["x"])).toThrow(/netns/);
});

test("benchmark placement: at most 16 processes, each a connected piece of the tree", () => {
  for (const k of [2, 4]) {
    for (const n of [16, 64, 256, 1024]) {
      const owner = processOf(n, k, 16);
      const pieces = new Set(owner);
      expect(pieces.size).toBeLessThanOrEqual(16);
      // Connected: within a piece, exactly one agent's parent is elsewhere (or it is the root).
      for (const piece of pieces) {
        const tops = owner.map((o, i) => (o === piece && (i === 0 || owner[treeParent(i, k)!] !== piece) ? i : -1)).filter((i) => i >= 0);
        expect({ n, k, piece, tops: tops.length }).toEqual({ n, k, piece, tops: 1 });
      }
    }
  }
  expect(processOf(16, 2, 16)).toEqual(Array.from({ length: 16 }, (_, i) => i));
});
