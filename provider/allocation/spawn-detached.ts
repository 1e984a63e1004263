// One way to start a daemon that outlives whoever starts it (node agents,
// the tests' sshd): detached (its own process group, so a signal to the
// starter's group does not reach it), stdin from /dev/null, stdout and stderr
// appended to its log file, not killed when this process exits, its exit
// status never a rejection and its output never buffered here (the log has it).
import * as fs from "fs";

/** A daemon being started: the starter waits until it serves (or has exited), then lets it go (unref) or kills it. */
export interface DetachedProcess {
  /** Undefined when the spawn itself failed. */
  readonly pid: number | undefined;
  /** Whether its 'exit' has been seen. */
  exited(): boolean;
  /** Lets this process exit without waiting for the daemon: once it is known to serve. */
  unref(): void;
  /** SIGKILL, if it still runs: a start that failed leaves nothing. */
  kill(): void;
}

/** Starts file with args detached, its output appended to logFile; env adds to this process's environment. */
export function spawnDetached(file: string, args: string[], o: { logFile: string; env?: NodeJS.ProcessEnv; cwd?: string }): DetachedProcess {
  const execa = require("execa") as typeof import("execa");
  const logFd = fs.openSync(o.logFile, "a");
  let child: import("execa").ExecaChildProcess;
  try {
    child = execa(file, args, {
      detached: true,
      stdin: "ignore",
      stdout: logFd,
      stderr: logFd,
      cleanup: false,
      reject: false,
      buffer: false,
      ...(o.env ? { env: o.env } : {}),
      ...(o.cwd ? { cwd: o.cwd } : {}),
    });
  } finally {
    // The child holds its own copy of the descriptor.
    fs.closeSync(logFd);
  }
  child.catch(() => undefined);
  let exited = false;
  child.on("exit", () => (exited = true));
  return {
    pid: child.pid,
    exited: () => exited,
    unref: () => child.unref(),
    kill() {
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
    },
  };
}
