import * as fs from "fs";
import * as path from "path";

const DAEMON_PIDFILES = ["/var/run/libvirtd.pid", "/var/run/virtlogd.pid"];

function livePid(pidfile: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(pidfile, "utf8").trim());
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
}

/** Runs scripts/libvirtd-up.sh (idempotent); returns its output. */
export async function libvirtdUp(): Promise<string> {
  const execa = require("execa") as typeof import("execa");
  const res = await execa("bash", [path.resolve(__dirname, "..", "..", "scripts", "libvirtd-up.sh")], { reject: false, all: true });
  if (res.exitCode !== 0) throw new Error(`scripts/libvirtd-up.sh failed (exit ${res.exitCode}): ${res.all}`);
  return res.all ?? "";
}

/** Starts libvirtd and virtlogd as a test needs them; the returned function stops only what was not running before. */
export async function libvirtdForTest(): Promise<() => Promise<void>> {
  const startedHere = DAEMON_PIDFILES.filter((f) => livePid(f) === undefined);
  await libvirtdUp();
  return async () => {
    for (const f of startedHere) {
      const pid = livePid(f);
      if (pid === undefined) continue;
      process.kill(pid, "SIGTERM");
      for (let i = 0; i < 50 && livePid(f) !== undefined; i++) await new Promise((r) => setTimeout(r, 100));
    }
  };
}
