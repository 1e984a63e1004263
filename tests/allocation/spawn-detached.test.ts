// spawnDetached (allocation/spawn-detached.ts), the one way agents and the
// tests' sshd are started as daemons: real processes (/bin/sh), their output
// in the log, their own process group, and nothing left behind.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { spawnDetached } from "../../provider/allocation/spawn-detached";
import { processEnded } from "../support/stack";

let dir: string;
beforeAll(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-spawn-"))));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

async function until(what: string, probe: () => boolean): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (probe()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

test("a daemon: its own process group, stdout and stderr appended to the log, env and cwd as given; kill ends it", async () => {
  const logFile = path.join(dir, "daemon.log");
  fs.writeFileSync(logFile, "earlier\n");
  const d = spawnDetached("/bin/sh", ["-c", 'echo "out $VSE_T $(pwd)"; echo err >&2; exec sleep 600'], { logFile, env: { VSE_T: "t1" }, cwd: dir });
  const pid = d.pid!;
  try {
    await until("both lines in the log", () => fs.readFileSync(logFile, "utf8").includes("err\n"));
    expect(fs.readFileSync(logFile, "utf8").split("\n").sort()).toEqual(["", "earlier", "err", `out t1 ${fs.realpathSync(dir)}`].sort());
    // Field 5 of /proc/<pid>/stat is the process group: detached, the daemon leads its own.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    expect(Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[2])).toBe(pid);
    expect(d.exited()).toBe(false);
    expect(fs.readlinkSync(`/proc/${pid}/fd/0`)).toBe("/dev/null");
  } finally {
    d.kill();
  }
  await until("its exit", () => d.exited());
  expect(processEnded(pid)).toBe(true);
  d.kill(); // a second kill of an ended process is no error
});

test("a process that ends by itself is seen as exited", async () => {
  const d = spawnDetached("/bin/sh", ["-c", "exit 3"], { logFile: path.join(dir, "short.log") });
  await until("its exit", () => d.exited());
  d.unref();
});

test("a program that does not exist: no pid, and kill is no error", async () => {
  const d = spawnDetached(path.join(dir, "no-such-program"), [], { logFile: path.join(dir, "missing.log") });
  expect(d.pid).toBeUndefined();
  d.kill();
  expect(fs.existsSync(path.join(dir, "missing.log"))).toBe(true);
});
