// The node agent daemon: `node dist/provider/agent/main.js --state-dir DIR --token-file FILE [--port N]`.
// Listens on 127.0.0.1, writes agent.json (pid, port) atomically once it serves.
import * as fs from "fs";
import * as path from "path";
import { Agent } from "./agent";
import { createServer } from "./server";
import { writeFileAtomic } from "./state";

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

function main(): void {
  const stateDir = arg("state-dir");
  const tokenFile = arg("token-file");
  const port = Number(arg("port") ?? "0");
  if (!stateDir || !tokenFile || !Number.isInteger(port) || port < 0 || port > 65535) {
    console.error("usage: agent --state-dir DIR --token-file FILE [--port N]");
    process.exit(2);
  }
  const token = fs.readFileSync(tokenFile, "utf8").trim();
  if (token.length < 32) {
    console.error(`${tokenFile}: expected a token of at least 32 characters`);
    process.exit(2);
  }
  const log = (msg: string) => console.log(`${new Date().toISOString()} ${msg}`);
  const agent = new Agent(stateDir, log);
  agent.load();
  const server = createServer(agent, token, () => {
    log("shutdown requested: every VM stopped, exiting");
    fs.rmSync(path.join(stateDir, "agent.json"), { force: true });
    process.exit(0);
  });
  server.listen(port, "127.0.0.1", () => {
    const addr = server.address();
    const actual = typeof addr === "object" && addr ? addr.port : port;
    writeFileAtomic(path.join(stateDir, "agent.json"), JSON.stringify({ pid: process.pid, port: actual, url: `http://127.0.0.1:${actual}` }));
    log(`agent serving on 127.0.0.1:${actual}, state in ${stateDir}`);
  });
  // SIGTERM ends the agent but not its VMs: a restarted agent re-adopts them.
  for (const sig of ["SIGTERM", "SIGINT"] as const) {
    process.on(sig, () => {
      log(`${sig}: exiting, VMs keep running`);
      agent.close();
      server.close();
      process.exit(0);
    });
  }
}

main();
