import * as crypto from "crypto";
import * as fs from "fs";
import * as path from "path";
import { AgentClient } from "../agent/client";
import { readJson, writeFileAtomic } from "../agent/state";
import { configVmName, isQemuFor } from "../drivers/qemu";

/** One node agent, as the cluster resource records it. */
export interface AgentRecord {
  host: number;
  url: string;
  port: number;
  pid: number;
  stateDir: string;
}

// The daemon always runs compiled code, also when this module is loaded from sources (ts-jest).
const AGENT_MAIN = __filename.endsWith(".ts")
  ? path.resolve(__dirname, "..", "..", "dist", "provider", "agent", "main.js")
  : path.resolve(__dirname, "..", "agent", "main.js");

export function newToken(): string {
  return crypto.randomBytes(32).toString("hex");
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function isAgentProcess(pid: number, stateDir: string): boolean {
  try {
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    return argv.includes(AGENT_MAIN) && argv[argv.indexOf("--state-dir") + 1] === stateDir;
  } catch {
    return false;
  }
}

/**
 * Starts (or restarts) the agent for one host as a detached daemon on
 * 127.0.0.1 and waits until it serves. A restart reuses the host's port and
 * state directory, so the agent re-adopts the VMs it was running.
 */
export async function startLocalAgent(stateDir: string, token: string, host: number, port = 0): Promise<AgentRecord> {
  const execa = require("execa") as typeof import("execa");
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const tokenFile = path.join(stateDir, "token");
  writeFileAtomic(tokenFile, token, 0o600);
  const infoFile = path.join(stateDir, "agent.json");
  fs.rmSync(infoFile, { force: true });
  const logFd = fs.openSync(path.join(stateDir, "agent.log"), "a");
  let child;
  try {
    child = execa(process.execPath, [AGENT_MAIN, "--state-dir", stateDir, "--token-file", tokenFile, "--port", String(port)], {
      detached: true,
      stdin: "ignore",
      stdout: logFd,
      stderr: logFd,
      cleanup: false,
      reject: false,
      buffer: false,
    });
  } finally {
    fs.closeSync(logFd);
  }
  child.catch(() => undefined);
  let exited = false;
  child.on("exit", () => (exited = true));
  const deadline = Date.now() + 15000;
  while (Date.now() < deadline && !exited) {
    const info = readJson<{ pid: number; port: number; url: string }>(infoFile);
    if (info && info.pid === child.pid) {
      child.unref();
      return { host, url: info.url, port: info.port, pid: info.pid, stateDir };
    }
    await sleep(25);
  }
  const logTail = fs.readFileSync(path.join(stateDir, "agent.log"), "utf8").trim().split("\n").slice(-5).join("\n");
  try {
    child.kill("SIGKILL");
  } catch {
    // already gone
  }
  throw new Error(`node agent for host ${host} did not start (state ${stateDir}):\n${logTail}`);
}

/** Whether the recorded agent answers its health check. */
export async function agentHealthy(a: AgentRecord, token: string): Promise<boolean> {
  try {
    const h = await new AgentClient(a.url, token).health();
    return h.ok === true && isAgentProcess(h.pid, a.stateDir);
  } catch {
    return false;
  }
}

/** Stops an agent and every VM it runs, then removes its state directory. */
export async function stopLocalAgent(a: AgentRecord, token: string): Promise<void> {
  try {
    await new AgentClient(a.url, token).shutdown();
  } catch {
    // An unreachable agent is handled below by pid.
  }
  const info = readJson<{ pid: number }>(path.join(a.stateDir, "agent.json"));
  for (const pid of new Set([a.pid, info?.pid].filter((p): p is number => p !== undefined))) {
    const deadline = Date.now() + 5000;
    while (isAgentProcess(pid, a.stateDir) && Date.now() < deadline) await sleep(50);
    if (isAgentProcess(pid, a.stateDir)) process.kill(pid, "SIGKILL");
  }
  // An agent that could not shut down cleanly may have left VMs behind.
  const state = readJson<{ vms: { spec: { config: string }; observed: { pid?: number } }[] }>(path.join(a.stateDir, "state.json"));
  for (const vm of state?.vms ?? []) {
    const pid = vm.observed.pid;
    if (pid !== undefined && isQemuFor(pid, configVmName(vm.spec.config))) process.kill(pid, "SIGKILL");
  }
  fs.rmSync(a.stateDir, { recursive: true, force: true });
}
