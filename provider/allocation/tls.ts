// The per-cluster certificate authority of agents that serve beyond this
// machine (issue 9). At cluster create time the controller makes a CA for the
// cluster (an EC P-256 key from node's crypto, a self-signed certificate from
// `openssl req`), kept in <clusterDir>/ca/ (0700, key 0600) and never sent to
// a host. Each agent host gets a server certificate signed by it whose only
// name is the host's IP address (subjectAltName IP:<address>, serverAuth, and
// clientAuth for the live migrations its QEMU sends to other hosts),
// with a key of its own. Clients pin the CA (AgentClient's `ca` option): only
// a certificate of this cluster's CA for the very address they dial is
// accepted, before the token is sent. openssl runs through execa argument
// arrays; its config and extension files are written by us, in a private
// temporary directory.
import * as crypto from "crypto";
import * as fs from "fs";
import * as path from "path";
import { writeFileAtomic } from "../agent/state";

export interface ClusterCa {
  /** The CA certificate (PEM): what clients pin and agents present in their chain. */
  certFile: string;
  /** The CA's private key (PEM, 0600); only the controller holds it. */
  keyFile: string;
  cert: string;
  /** SHA-256 fingerprint of the CA certificate, as node prints it (AA:BB:…). */
  fingerprint256: string;
}

export interface ServerCert {
  certFile: string;
  keyFile: string;
  address: string;
}

/** An IPv4 address an agent may serve on: unicast, not the wildcard (0.0.0.0) nor broadcast nor multicast. */
export function checkListenAddress(address: string): void {
  const m = /^(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})$/.exec(address);
  const o = m ? m.slice(1).map(Number) : [];
  if (!m || o.some((x) => x > 255)) throw new Error(`address: expected an IPv4 address a.b.c.d, found ${JSON.stringify(address)}`);
  if (o[0] === 0) throw new Error(`address ${address}: an agent never listens on 0.0.0.0 (or 0.x.x.x); give the host's own address`);
  if (o[0] >= 224) throw new Error(`address ${address}: expected a unicast address, not multicast or broadcast`);
}

async function openssl(args: string[], input?: string): Promise<string> {
  const execa = require("execa") as typeof import("execa");
  const r = await execa("openssl", args, { reject: false, timeout: 30000, ...(input !== undefined ? { input } : { stdin: "ignore" }) });
  if (r.exitCode !== 0) throw new Error(`openssl ${args[0]}: ${(r.stderr || r.stdout || `exit ${r.exitCode}`).trim()}`);
  // execa strips the final newline; PEM blocks are concatenated, so put it back.
  return r.stdout.endsWith("\n") ? r.stdout : `${r.stdout}\n`;
}

function newKeyPem(): string {
  const { privateKey } = crypto.generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  return privateKey.export({ type: "pkcs8", format: "pem" }) as string;
}

/** A directory only this user can read, removed after fn. */
async function withScratch<T>(parent: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = fs.mkdtempSync(path.join(parent, ".tls-"));
  fs.chmodSync(dir, 0o700);
  try {
    return await fn(dir);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function describeCa(certFile: string, keyFile: string): ClusterCa {
  const cert = fs.readFileSync(certFile, "utf8");
  const x = new crypto.X509Certificate(cert);
  if (!x.ca) throw new Error(`${certFile}: not a CA certificate`);
  return { certFile, keyFile, cert, fingerprint256: x.fingerprint256 };
}

/** The cluster's CA in dir (made 0700): made once, reused afterwards (idempotent). */
export async function ensureClusterCa(dir: string, clusterKey: string): Promise<ClusterCa> {
  if (!/^[0-9a-f]{10}$/.test(clusterKey)) throw new Error(`cluster key: expected 10 hex digits, found ${JSON.stringify(clusterKey)}`);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.chmodSync(dir, 0o700);
  const certFile = path.join(dir, "ca.pem");
  const keyFile = path.join(dir, "ca.key");
  if (fs.existsSync(certFile) && fs.existsSync(keyFile)) return describeCa(certFile, keyFile);
  await withScratch(dir, async (tmp) => {
    const key = path.join(tmp, "ca.key");
    writeFileAtomic(key, newKeyPem(), 0o600);
    const cfg = path.join(tmp, "ca.cnf");
    fs.writeFileSync(
      cfg,
      [
        "[req]",
        "distinguished_name = dn",
        "prompt = no",
        "x509_extensions = ext",
        "[dn]",
        `CN = vse cluster ${clusterKey} agent CA`,
        "[ext]",
        "basicConstraints = critical,CA:TRUE,pathlen:0",
        "keyUsage = critical,keyCertSign,cRLSign",
        "subjectKeyIdentifier = hash",
        "",
      ].join("\n"),
      { mode: 0o600 },
    );
    const pem = await openssl(["req", "-new", "-x509", "-config", cfg, "-key", key, "-sha256", "-days", "3650", "-set_serial", `0x${serial()}`]);
    // The key first: a certificate without its key is never taken for a CA.
    fs.renameSync(key, keyFile);
    writeFileAtomic(certFile, pem, 0o644);
  });
  return describeCa(certFile, keyFile);
}

function serial(): string {
  // Positive, 128 bits.
  const b = crypto.randomBytes(16);
  b[0] &= 0x7f;
  return b.toString("hex");
}

/**
 * A server certificate for one agent host, signed by the cluster's CA: its
 * only name is the address (IP SAN), serverAuth and clientAuth. Written to
 * outDir/agent.pem (the certificate, then the CA's) and outDir/agent.key (0600).
 */
export async function issueServerCert(ca: ClusterCa, address: string, outDir: string, days = 825): Promise<ServerCert> {
  checkListenAddress(address);
  fs.mkdirSync(outDir, { recursive: true, mode: 0o700 });
  fs.chmodSync(outDir, 0o700);
  const certFile = path.join(outDir, "agent.pem");
  const keyFile = path.join(outDir, "agent.key");
  await withScratch(outDir, async (tmp) => {
    const key = path.join(tmp, "agent.key");
    writeFileAtomic(key, newKeyPem(), 0o600);
    const cfg = path.join(tmp, "req.cnf");
    fs.writeFileSync(cfg, ["[req]", "distinguished_name = dn", "prompt = no", "[dn]", `CN = vse agent ${address}`, ""].join("\n"), { mode: 0o600 });
    const ext = path.join(tmp, "ext.cnf");
    fs.writeFileSync(
      ext,
      [
        "[ext]",
        "basicConstraints = critical,CA:FALSE",
        // keyEncipherment too: QEMU's tls-creds-x509 refuses a critical keyUsage without it. clientAuth: the same
        // certificate is the host's client one when its QEMU sends a live migration (verify-peer on the target).
        "keyUsage = critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage = serverAuth,clientAuth",
        `subjectAltName = critical,IP:${address}`,
        "subjectKeyIdentifier = hash",
        "authorityKeyIdentifier = keyid",
        "",
      ].join("\n"),
      { mode: 0o600 },
    );
    const csr = path.join(tmp, "agent.csr");
    fs.writeFileSync(csr, await openssl(["req", "-new", "-config", cfg, "-key", key, "-sha256"]), { mode: 0o600 });
    const pem = await openssl([
      "x509",
      "-req",
      "-in",
      csr,
      "-CA",
      ca.certFile,
      "-CAkey",
      ca.keyFile,
      "-set_serial",
      `0x${serial()}`,
      "-days",
      String(days),
      "-sha256",
      "-extfile",
      ext,
      "-extensions",
      "ext",
    ]);
    fs.renameSync(key, keyFile);
    writeFileAtomic(certFile, pem + ca.cert, 0o644);
  });
  return { certFile, keyFile, address };
}
