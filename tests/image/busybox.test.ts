import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as zlib from "zlib";
import { buildImage, imageId, initScript, markersFor, shQuote } from "../../provider/image/busybox";
import type { EnvironmentModel } from "../../provider/model/resolve";

const execa = require("execa") as typeof import("execa");

const env: EnvironmentModel = {
  name: "e",
  base: "busybox",
  kernelArgs: [],
  job: { command: ["/bin/sh", "-c", "echo $((2+3))"], env: { B: "2", A: "x y" }, afterJob: "stay-up", timeoutSeconds: 60 },
};

let cache: string;
beforeAll(() => (cache = fs.mkdtempSync(path.join(os.tmpdir(), "vse-img-"))));
afterAll(() => fs.rmSync(cache, { recursive: true, force: true }));

test("the same definition gives the same image id and reuses the cached image", () => {
  const a = buildImage(env, cache);
  const b = buildImage(structuredClone(env), cache);
  expect(a.built).toBe(true);
  expect(b).toEqual({ ...a, built: false });
  expect(a.id).toMatch(/^[0-9a-f]{64}$/);
  expect(fs.readdirSync(path.join(cache, "images"))).toEqual([a.id]);
});

test("the initramfs is byte-identical when rebuilt from scratch", () => {
  const first = fs.readFileSync(buildImage(env, cache).initrd);
  const other = fs.mkdtempSync(path.join(os.tmpdir(), "vse-img2-"));
  try {
    expect(fs.readFileSync(buildImage(env, other).initrd).equals(first)).toBe(true);
  } finally {
    fs.rmSync(other, { recursive: true, force: true });
  }
});

test("a change to the job, its environment or afterJob gives a new image id; the timeout does not", () => {
  const id = imageId(env);
  expect(imageId({ ...env, job: { ...env.job, command: ["/bin/sh", "-c", "echo $((2+4))"] } })).not.toBe(id);
  expect(imageId({ ...env, job: { ...env.job, env: { A: "x y", B: "3" } } })).not.toBe(id);
  expect(imageId({ ...env, job: { ...env.job, afterJob: "power-off" } })).not.toBe(id);
  expect(imageId({ ...env, job: { ...env.job, timeoutSeconds: 5 } })).toBe(id);
  expect(imageId({ ...env, name: "renamed" })).toBe(id);
});

test("the archive is a valid newc cpio with init, busybox and a console device", async () => {
  const img = buildImage(env, cache);
  const cpio = zlib.gunzipSync(fs.readFileSync(img.initrd));
  const listing = await execa("/bin/busybox", ["cpio", "-t"], { input: cpio });
  expect(listing.stdout.split("\n").sort()).toEqual(["bin", "bin/busybox", "dev", "dev/console", "init", "proc", "root", "sbin", "sys", "tmp"]);
});

test("the job's argv and environment survive quoting exactly", async () => {
  const tricky = ["printf", "%s|", "a b", "it's", "$(rm -rf /)", '"q"', "back\\slash", ""];
  for (const arg of tricky) {
    const out = await execa("/bin/busybox", ["sh", "-c", `printf %s ${shQuote(arg)}`]);
    expect(out.stdout).toBe(arg);
  }
  const script = initScript({ ...env, job: { ...env.job, command: tricky } }, markersFor("f".repeat(64)));
  // Run the generated lines that set argv and run the job, in busybox sh on the host.
  const lines = script.split("\n");
  const argvLine = lines.find((l) => l.startsWith("set -- "))!;
  const out = await execa("/bin/busybox", ["sh", "-c", `${argvLine}\n"$@"`]);
  expect(out.stdout).toBe(
    tricky
      .slice(2)
      .map((a) => `${a}|`)
      .join(""),
  );
  expect(script).toContain("export A='x y'");
});
