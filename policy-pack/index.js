// Entry point of the CrossGuard policy pack: `pulumi preview|up --policy-pack policy-pack`
// (Automation API: policyPacks: ["<repo>/policy-pack"]). The rules are in
// provider/policy-pack/index.ts, compiled into dist/ by `npm run build`.
const { PolicyPack } = require("@pulumi/policy");
const { PACK_NAME, policyPackArgs } = require("../dist/provider/policy-pack");

new PolicyPack(PACK_NAME, policyPackArgs());
