import * as crypto from "crypto";
import * as fs from "fs";
import * as net from "net";

/**
 * An exclusive lock on an agent's state directory for as long as the holder
 * lives: an abstract unix socket named after the directory. The kernel
 * releases it when the process dies, however it dies, so there is never a
 * stale lock to judge. Rejects with EADDRINUSE while another holds it.
 */
export function lockStateDir(stateDir: string): Promise<net.Server> {
  const name = `\0vse-agent-lock:${crypto.createHash("sha256").update(fs.realpathSync(stateDir)).digest("hex").slice(0, 40)}`;
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(name, () => resolve(srv));
  });
}

/** Takes the lock, waiting up to timeoutMs while another holder has it. */
export async function waitForLock(stateDir: string, timeoutMs: number): Promise<net.Server> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await lockStateDir(stateDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EADDRINUSE" || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
