// The engine's floor (npm run bench): dynamic resources whose create returns at once. `pulumi up`
// then costs what ours costs minus our own work: engine, language host, program, the dynamic-provider
// plugin (pulumi-resource-pulumi-nodejs) and the checkpoint writes. Stack config: `count` resources
// (default 1), `changed` (changes the input of resource 0 only), `payload` (bytes of filler input per
// resource, to give the checkpoint as many bytes per resource as one of ours).
const pulumi = require("@pulumi/pulumi");

const cfg = new pulumi.Config();
const count = cfg.getNumber("count") ?? 1;
const changed = cfg.getBoolean("changed") ?? false;
const payload = "x".repeat(cfg.getNumber("payload") ?? 0);

const provider = {
  create: async (inputs) => ({ id: `trivial-${inputs.index}`, outs: inputs }),
  diff: async (_id, olds, news) => ({ changes: olds.value !== news.value }),
  update: async (_id, _olds, news) => ({ outs: news }),
};

const ids = [];
for (let i = 0; i < count; i++) {
  const value = changed && i === 0 ? 2 : 1;
  const r = new pulumi.dynamic.Resource(provider, `trivial-${i}`, { index: i, value, payload }, {}, "bench", "Trivial");
  if (i < 10) ids.push(r.id);
}
module.exports = { ids };
