// One VmJob of the definitions named in stack config (vse:definitions, vse:cluster): its guests' outputs and exit codes become stack outputs.
const pulumi = require("@pulumi/pulumi");
const { VmJob } = require("../../../dist/provider/resources/vm-job");

const cfg = new pulumi.Config("vse");
const job = new VmJob("job", {
  definitions: [cfg.require("definitions")],
  cluster: cfg.require("cluster"),
  jobs: cfg.requireNumber("jobs"),
  vmsPerSlot: cfg.requireNumber("vmsPerSlot"),
  stateDir: cfg.require("stateDir"),
  cacheDir: cfg.require("cacheDir"),
});
exports.slurmJobId = job.slurmJobId;
exports.exitCodes = job.exitCodes;
exports.outputs = job.outputs;
