// The job step of `vse job submit` on a node (srun runs it once per array task):
//   node dist/provider/job/run.js --job <job.json>
// Slurm says which job, task and node (SLURM_ARRAY_JOB_ID or SLURM_JOB_ID,
// SLURM_ARRAY_TASK_ID, SLURMD_NODENAME). Prints one result line (RESULT_PREFIX +
// JSON) on stdout and logs on stderr. Exit status: the first non-zero exit code
// of a guest's job, 1 when a guest gave no result or the runner failed, 143 when
// cancelled (SIGTERM/SIGINT: every guest is powered down first).
import * as fs from "fs";
import * as os from "os";
import { checkJobSpec, RESULT_PREFIX, runVmJob } from "./vm-job";

async function main(argv: string[]): Promise<number> {
  const log = (m: string) => process.stderr.write(`[vse-job ${new Date().toISOString()}] ${m}\n`);
  const i = argv.indexOf("--job");
  if (i < 0 || !argv[i + 1] || argv.length !== 2) {
    log("usage: run.js --job <job.json>");
    return 2;
  }
  const file = argv[i + 1];
  const spec = checkJobSpec(JSON.parse(fs.readFileSync(file, "utf8")), file);
  const jobId = process.env.SLURM_ARRAY_JOB_ID ?? process.env.SLURM_JOB_ID ?? "";
  const task = Number(process.env.SLURM_ARRAY_TASK_ID ?? "0");
  const node = process.env.SLURMD_NODENAME ?? os.hostname();
  let aborted = false;
  const handlers: (() => void)[] = [];
  const abort = {
    get aborted() {
      return aborted;
    },
    onAbort: (fn: () => void) => void handlers.push(fn),
  };
  for (const sig of ["SIGTERM", "SIGINT"] as const) {
    process.on(sig, () => {
      if (aborted) return;
      aborted = true;
      log(`${sig}: the job is being cancelled`);
      handlers.forEach((h) => h());
    });
  }
  const result = await runVmJob(spec, { jobId, task, node }, { log, abort });
  process.stdout.write(`${RESULT_PREFIX}${JSON.stringify(result)}\n`);
  if (result.cancelled) return 143;
  const failed = result.vms.find((v) => v.state !== "done");
  if (failed) return 1;
  return result.vms.find((v) => v.exitCode !== 0)?.exitCode ?? 0;
}

main(process.argv.slice(2)).then(
  (code) => (process.exitCode = code),
  (err: Error) => {
    process.stderr.write(`[vse-job] ${err.message}\n`);
    process.exitCode = 1;
  },
);
