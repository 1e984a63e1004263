// A real OpenSSH server (Debian openssh-server) for tests, in a namespace host
// (allocation/netns.ts): `ip netns exec <ns> /usr/sbin/sshd -D -e -f <config>
// -h <host key>` on the host's address only, with a host key generated for
// this run and public-key authentication only, for root, against an
// authorized-keys file of this run. Everything lives in the directory given.
import * as fs from "fs";
import * as net from "net";
import * as path from "path";
import { netnsExec } from "../../provider/allocation/netns";
import { spawnDetached } from "../../provider/allocation/spawn-detached";
import { processEnded } from "./stack";

export const SSHD = "/usr/sbin/sshd";

export interface TestSshd {
  netns: string;
  address: string;
  port: number;
  pid: number;
  /** The host's public key line (type, base64). */
  hostKey: string;
  /** The known_hosts line that pins this server's key for its address. */
  knownHostsLine: string;
  logFile: string;
  stop(): Promise<void>;
}

/** A fresh ed25519 key pair (no passphrase) at file and file.pub; returns the public key line. */
export async function sshKeygen(file: string, comment: string): Promise<string> {
  const execa = require("execa") as typeof import("execa");
  fs.rmSync(file, { force: true });
  fs.rmSync(`${file}.pub`, { force: true });
  await execa("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", file], { stdin: "ignore" });
  return fs.readFileSync(`${file}.pub`, "utf8").trim();
}

/** The known_hosts form of a host key for address:port. */
export function knownHostsLine(address: string, port: number, publicKeyLine: string): string {
  const [type, key] = publicKeyLine.split(/\s+/);
  return `${port === 22 ? address : `[${address}]:${port}`} ${type} ${key}`;
}

function canConnect(address: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: address, port, timeout: 1000 });
    s.on("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.on("error", () => resolve(false));
    s.on("timeout", () => {
      s.destroy();
      resolve(false);
    });
  });
}

/** Starts sshd in netns on address:port, accepting the given public keys for root; waits until it accepts connections. */
export async function startSshd(o: { netns: string; address: string; port?: number; dir: string; authorizedKeys: string[] }): Promise<TestSshd> {
  const port = o.port ?? 22;
  fs.mkdirSync(o.dir, { recursive: true, mode: 0o700 });
  // sshd's privilege-separation directory (Debian's service makes it; we run sshd directly).
  fs.mkdirSync("/run/sshd", { recursive: true, mode: 0o755 });
  const hostKeyFile = path.join(o.dir, "ssh_host_ed25519_key");
  const hostKey = await sshKeygen(hostKeyFile, `vse test host ${o.address}`);
  const authorized = path.join(o.dir, "authorized_keys");
  fs.writeFileSync(authorized, o.authorizedKeys.map((k) => `${k}\n`).join(""), { mode: 0o600 });
  const config = path.join(o.dir, "sshd_config");
  fs.writeFileSync(
    config,
    [
      `ListenAddress ${o.address}:${port}`,
      `HostKey ${hostKeyFile}`,
      `PidFile ${path.join(o.dir, "sshd.pid")}`,
      `AuthorizedKeysFile ${authorized}`,
      "AuthenticationMethods publickey",
      "PubkeyAuthentication yes",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "PermitRootLogin prohibit-password",
      "AllowUsers root",
      "UsePAM no",
      // The test's files are under the temp directory (mode 1777), which StrictModes refuses as a home path.
      "StrictModes no",
      "AllowTcpForwarding no",
      "AllowAgentForwarding no",
      "X11Forwarding no",
      "PermitTunnel no",
      "PrintMotd no",
      "LogLevel VERBOSE",
      "",
    ].join("\n"),
    { mode: 0o600 },
  );
  const logFile = path.join(o.dir, "sshd.log");
  const cmd = netnsExec(o.netns, [SSHD, "-D", "-e", "-f", config, "-h", hostKeyFile]);
  const child = spawnDetached(cmd.file, cmd.args, { logFile });
  const pid = child.pid!;
  const deadline = Date.now() + 20000;
  while (!child.exited() && Date.now() < deadline && !(await canConnect(o.address, port))) await new Promise((r) => setTimeout(r, 100));
  if (child.exited() || !(await canConnect(o.address, port))) {
    child.kill();
    throw new Error(`sshd in ${o.netns} on ${o.address}:${port} did not start:\n${fs.readFileSync(logFile, "utf8").slice(-2000)}`);
  }
  child.unref();
  return {
    netns: o.netns,
    address: o.address,
    port,
    pid,
    hostKey,
    knownHostsLine: knownHostsLine(o.address, port, hostKey),
    logFile,
    async stop() {
      try {
        process.kill(pid, "SIGTERM");
      } catch {
        return;
      }
      const end = Date.now() + 5000;
      while (!processEnded(pid) && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // ended
      }
    },
  };
}
