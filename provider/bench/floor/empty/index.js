// The engine's floor (npm run bench): a Node program that declares nothing; `pulumi up` then costs
// engine start, language host, program and checkpoint, with no resource provider at all.
require("@pulumi/pulumi");
