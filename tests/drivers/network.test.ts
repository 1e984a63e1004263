import fc from "fast-check";
import { clusterNetwork, guestIpv4, isLocalUnicastMac, macAddress, nicsFor } from "../../provider/drivers/network";

const clusterName = fc.stringMatching(/^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$/);

test("MACs are deterministic, canonical, locally administered and unicast", () => {
  fc.assert(
    fc.property(clusterName, fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 255 }), (c, vm, nic) => {
      const mac = macAddress(c, vm, nic);
      expect(macAddress(c, vm, nic)).toBe(mac);
      expect(isLocalUnicastMac(mac)).toBe(true);
    }),
  );
});

test("MACs are unique within a cluster, across VMs and NICs", () => {
  fc.assert(
    fc.property(clusterName, (c) => {
      const macs = new Set<string>();
      for (let vm = 0; vm < 256; vm++) for (let nic = 0; nic < 4; nic++) macs.add(macAddress(c, vm, nic));
      expect(macs.size).toBe(256 * 4);
    }),
    { numRuns: 20 },
  );
});

test("different clusters get different MAC prefixes (checked on a sample)", () => {
  const names = Array.from({ length: 200 }, (_, i) => `cluster-${i}`);
  expect(new Set(names.map((n) => macAddress(n, 0).slice(0, 8))).size).toBe(names.length);
});

test("known values stay put, so a provider upgrade does not change every VM's MAC", () => {
  expect(macAddress("md-sim", 0)).toBe("fa:a5:a6:00:00:00");
  expect(macAddress("md-sim", 3)).toBe("fa:a5:a6:00:00:03");
  expect(macAddress("md-sim", 258, 1)).toBe("fa:a5:a6:01:01:02");
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
    fc.property(clusterName, (c) => {
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
