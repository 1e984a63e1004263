import fc from "fast-check";
import { clusterKey, clusterNetwork, domainName, guestIpv4, isLocalUnicastMac, macAddress, nicsFor } from "../../provider/drivers/network";

const clusterName = fc.stringMatching(/^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$/);
/** MACs, networks and NICs are derived from the cluster key; any string works as one, real keys are 10 hex digits. */
const key = fc.oneof(fc.stringMatching(/^[0-9a-f]{10}$/), clusterName);

test("the cluster key: 10 hex digits of sha256(project NUL stack NUL cluster), different per stack", () => {
  expect(clusterKey("vse", "local", "md-sim")).toBe(require("crypto").createHash("sha256").update("vse\0local\0md-sim").digest("hex").slice(0, 10));
  fc.assert(
    fc.property(fc.string(), fc.string(), clusterName, (project, stack, c) => {
      const k = clusterKey(project, stack, c);
      expect(k).toMatch(/^[0-9a-f]{10}$/);
      expect(clusterKey(project, `${stack}x`, c)).not.toBe(k);
    }),
  );
  // The separator keeps ("a", "bc") and ("ab", "c") apart.
  expect(clusterKey("a", "bc", "x")).not.toBe(clusterKey("ab", "c", "x"));
  expect(domainName("0123456789", "md-sim-0")).toBe("vse-0123456789-md-sim-0");
});

test("MACs are deterministic, canonical, locally administered and unicast", () => {
  fc.assert(
    fc.property(key, fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 255 }), (c, vm, nic) => {
      const mac = macAddress(c, vm, nic);
      expect(macAddress(c, vm, nic)).toBe(mac);
      expect(isLocalUnicastMac(mac)).toBe(true);
    }),
  );
});

test("MACs are unique within a cluster, across VMs and NICs", () => {
  fc.assert(
    fc.property(key, (c) => {
      const macs = new Set<string>();
      for (let vm = 0; vm < 256; vm++) for (let nic = 0; nic < 4; nic++) macs.add(macAddress(c, vm, nic));
      expect(macs.size).toBe(256 * 4);
    }),
    { numRuns: 20 },
  );
});

test("different cluster keys get different MAC prefixes (checked on a sample)", () => {
  const names = Array.from({ length: 200 }, (_, i) => clusterKey("vse", "local", `cluster-${i}`));
  expect(new Set(names.map((n) => macAddress(n, 0).slice(0, 8))).size).toBe(names.length);
});

test("known values stay put, so a provider upgrade does not change every VM's MAC", () => {
  // The first three octets come from the key as they came from the name before keys existed.
  expect(macAddress("md-sim", 0)).toBe("fa:a5:a6:00:00:00");
  expect(macAddress("md-sim", 3)).toBe("fa:a5:a6:00:00:03");
  expect(macAddress("md-sim", 258, 1)).toBe("fa:a5:a6:01:01:02");
  const k = clusterKey("vse", "local", "md-sim");
  expect(k).toBe("b777fa3fe1");
  expect(macAddress(k, 3)).toBe("7a:7c:ec:00:00:03");
});

test("indices out of range are refused, not wrapped into a duplicate", () => {
  expect(() => macAddress("c", 0x10000)).toThrow("VM index 65536 is outside 0..65535");
  expect(() => macAddress("c", -1)).toThrow("outside");
  expect(() => macAddress("c", 0, 256)).toThrow("NIC index 256 is outside 0..255");
});

test("isLocalUnicastMac rejects globally administered, multicast and non-canonical addresses", () => {
  expect(isLocalUnicastMac("52:54:00:12:34:56")).toBe(true);
  expect(isLocalUnicastMac("00:16:3e:12:34:56")).toBe(false);
  expect(isLocalUnicastMac("03:00:00:00:00:01")).toBe(false);
  expect(isLocalUnicastMac("52:54:00:12:34:5G")).toBe(false);
  expect(isLocalUnicastMac("52:54:00:ab:cd:ef")).toBe(true);
  expect(isLocalUnicastMac("52:54:00:AB:CD:EF")).toBe(false);
});

test("cluster network: organisation-local multicast group and an unprivileged port, stable per name", () => {
  fc.assert(
    fc.property(key, (c) => {
      const n = clusterNetwork(c);
      expect(n).toEqual(clusterNetwork(c));
      expect(n.name).toBe(`vse-${c}`);
      const octets = n.mcast.address.split(".").map(Number);
      expect(octets.slice(0, 2)).toEqual([239, 255]);
      expect(octets.every((o) => o >= 0 && o <= 255)).toBe(true);
      expect(n.mcast.port).toBeGreaterThanOrEqual(20000);
      expect(n.mcast.port).toBeLessThan(40000);
    }),
  );
});

test("guest addresses are unique per VM index and NICs carry them", () => {
  const ips = Array.from({ length: 256 }, (_, i) => guestIpv4(i));
  expect(new Set(ips).size).toBe(256);
  expect(ips[0]).toBe("10.77.0.1");
  expect(ips[255]).toBe("10.77.1.0");
  expect(nicsFor("c", 4)).toEqual([{ index: 0, mac: macAddress("c", 4), ipv4: "10.77.0.5" }]);
});
