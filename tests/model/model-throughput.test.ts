import * as fs from "fs";
import * as os from "os";
import { modelThroughput } from "../../provider/bench/model-throughput";

test("model throughput: a 1,000-VM definition set validates and renders, leaving no files", async () => {
  const before = fs.readdirSync(os.tmpdir()).filter((f) => f.startsWith("vse-model-bench-"));
  const r = await modelThroughput();
  expect(r.definitions).toBe(71);
  expect(r.vms).toBe(1000);
  expect(r.validateSeconds).toBeGreaterThan(0);
  expect(r.renderSeconds).toBeGreaterThan(0);
  expect(r.configsPerSecond).toBeCloseTo(r.vms / r.renderSeconds, 6);
  expect(fs.readdirSync(os.tmpdir()).filter((f) => f.startsWith("vse-model-bench-"))).toEqual(before);
});
