import * as fs from "fs";
import { parseJob } from "../../provider/agent/agent";
import type { JobResult } from "../../provider/agent/protocol";
import type { EnvironmentModel, ProfileModel, VmModel } from "../../provider/model/resolve";

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function environment(name: string, command: string[]): EnvironmentModel {
  return { name, base: "busybox", kernelArgs: [], job: { command, env: {}, afterJob: "stay-up", timeoutSeconds: 120 } };
}

export function vmModel(name: string, hypervisor: ProfileModel["hypervisor"], index = 0): VmModel {
  return { name, index, host: 0, profile: { name: "test", hypervisor, memoryMiB: 128, vcpus: 1, machine: "pc", accel: "tcg" } };
}

export function readText(file: string): string {
  try {
    return fs.readFileSync(file, "utf8");
  } catch {
    return "";
  }
}

/** Waits until the console file shows the job's result between its markers. */
export async function waitJob(consoleFile: string, markers: { begin: string; end: string }, timeoutMs: number): Promise<JobResult & { state: "done" }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const job = parseJob(readText(consoleFile), markers);
    if (job.state === "done") return job as JobResult & { state: "done" };
    if (Date.now() > deadline) throw new Error(`no job result in ${consoleFile} within ${timeoutMs} ms; console ends: ${readText(consoleFile).slice(-400)}`);
    await sleep(200);
  }
}

/** The highest "tick N" the guest has printed so far, or -1. */
export function lastTick(text: string): number {
  const all = [...text.matchAll(/^tick (\d+)\r?$/gm)].map((m) => Number(m[1]));
  return all.length ? Math.max(...all) : -1;
}

export async function waitFor<T>(what: string, probe: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(200);
  }
}

/** A free TCP port on 127.0.0.1, for a migration target to listen on. */
export function freePort(): Promise<number> {
  const net = require("net") as typeof import("net");
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as import("net").AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}
