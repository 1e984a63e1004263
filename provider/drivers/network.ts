import * as crypto from "crypto";
import type { ImageExtras } from "../image/busybox";

/** What a guest on a cluster network needs in its image: the virtio NIC driver, and eth0 set up from vse.ip= on its command line. */
export const CLUSTER_NETWORK_EXTRAS: ImageExtras = { modules: ["virtio_net", "virtio_pci"], network: true };

/** The private network one virtual cluster's VMs share (seed 002: NICs, MAC addresses, network definitions). */
export interface ClusterNetwork {
  /** Name of the network where a hypervisor needs one (libvirt, Xen bridge, VirtualBox internal network). */
  name: string;
  /**
   * QEMU's socket backend in multicast mode: every VM of the cluster joins one
   * group, so the cluster is one Ethernet segment without a host bridge.
   */
  mcast: { address: string; port: number };
}

/**
 * Why multicast across hosts (issue 9): the cluster's segment is the same
 * per-cluster group on the hosts' own link, each NIC bound to its host's
 * address (QEMU's localaddr= sets both the interface that joins the group and
 * the one that sends), with TTL 1 (QEMU's default), so frames never leave the
 * hosts' L2 segment. Nothing runs besides QEMU (no relay, no tunnel device to
 * create or clean up), VMs on one host still see each other (multicast
 * loopback), and a cluster's NICs receive only their own group and port. The
 * hosts' switch (the namespace hosts' bridge) must forward multicast: a Linux
 * bridge does, with IGMP snooping on too (QEMU's join sends the report).
 * Between L2 segments (racks behind routers) it needs multicast routing;
 * a site without it would need a tunnel per cluster instead.
 */
/** Where a rendered config names the VM's host address that is not known at plan time (resource-manager hosts): the agent puts its own in, like agent:console. */
export const HOST_ADDRESS_PLACEHOLDER = "agent:host-address";
/** The address a VM's NICs are bound to on agents of this machine (allocation.manager local): loopback, the one-machine segment. */
export const LOOPBACK_HOST_ADDRESS = "127.0.0.1";

export interface Nic {
  /** Index of the NIC within its VM. */
  index: number;
  mac: string;
  /** Guest IPv4 address on the cluster network; the guest configures it itself. */
  ipv4: string;
}

function digest(text: string): Buffer {
  return crypto.createHash("sha256").update(text).digest();
}

/** A cluster key: 10 lower-case hex digits. */
export const CLUSTER_KEY = /^[0-9a-f]{10}$/;

/**
 * The key that isolates a cluster's names per Pulumi stack: the first 10 hex
 * digits of sha256("<project>\0<stack>\0<cluster>"). Two stacks declaring a
 * cluster of the same name get different MACs, multicast groups and libvirt
 * domain names.
 */
export function clusterKey(project: string, stack: string, cluster: string): string {
  return crypto.createHash("sha256").update(`${project}\0${stack}\0${cluster}`).digest("hex").slice(0, 10);
}

/** The libvirt domain of a VM: "vse-<cluster key>-<vm name>", so stacks sharing a libvirtd cannot collide. */
export function domainName(key: string, vm: string): string {
  return `vse-${key}-${vm}`;
}

/**
 * A deterministic MAC: locally administered unicast (second-lowest bit of the
 * first octet set, lowest clear), three octets from the cluster key, one for
 * the NIC index and two for the VM index. VM and NIC indices are encoded
 * directly, so MACs are unique within a cluster; across clusters they differ
 * unless the 22 hashed bits collide.
 */
export function macAddress(key: string, vmIndex: number, nicIndex = 0): string {
  if (!Number.isInteger(vmIndex) || vmIndex < 0 || vmIndex > 0xffff) throw new Error(`VM index ${vmIndex} is outside 0..65535`);
  if (!Number.isInteger(nicIndex) || nicIndex < 0 || nicIndex > 0xff) throw new Error(`NIC index ${nicIndex} is outside 0..255`);
  const h = digest(`vse-mac:${key}`);
  const octets = [(h[0] & 0xfc) | 0x02, h[1], h[2], nicIndex, vmIndex >> 8, vmIndex & 0xff];
  return octets.map((o) => o.toString(16).padStart(2, "0")).join(":");
}

/** True for a locally administered unicast MAC in canonical lower-case form. */
export function isLocalUnicastMac(mac: string): boolean {
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(mac)) return false;
  const first = parseInt(mac.slice(0, 2), 16);
  return (first & 0x02) === 0x02 && (first & 0x01) === 0;
}

/** The cluster's network: a multicast group in the organisation-local scope (239.255.0.0/16) and a port, both from the cluster key. */
export function clusterNetwork(key: string): ClusterNetwork {
  const h = digest(`vse-net:${key}`);
  return { name: `vse-${key}`, mcast: { address: `239.255.${h[0]}.${h[1] === 0 ? 1 : h[1]}`, port: 20000 + (h.readUInt16BE(2) % 20000) } };
}

/** Guest addresses: 10.77.0.0/16, host part from the VM index, so VM i is always 10.77.(i+1>>8).(i+1&255). */
export function guestIpv4(vmIndex: number): string {
  const n = vmIndex + 1;
  return `10.77.${n >> 8}.${n & 0xff}`;
}

/** A VM's NICs on its cluster's network; key is the cluster key (clusterKey), not the cluster's name. */
export function nicsFor(key: string, vmIndex: number): Nic[] {
  return [{ index: 0, mac: macAddress(key, vmIndex, 0), ipv4: guestIpv4(vmIndex) }];
}

/**
 * Whether two rendered configs differ in nothing but the host address their NICs are bound to (QEMU's -netdev …,localaddr=):
 * what a VM's config changes by when it moves to another host. The NIC's state moves with a live migration; the backend is
 * the target host's, so such a change is placement, not a new config.
 */
export function sameBesidesHostAddress(a: string, b: string): boolean {
  const strip = (c: string) => c.replace(/^(-netdev socket,[^\n]*,localaddr=)[^,\n]*$/gm, "$1");
  return a !== b && strip(a) === strip(b);
}
