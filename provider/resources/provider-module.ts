// Types only: the package's index loads the whole SDK (automation API, closure serializer, TypeScript).
import type * as pulumi from "@pulumi/pulumi";
import { CustomResource } from "@pulumi/pulumi/resource";

/**
 * The `__provider` of our dynamic resources: a one-line module that loads the
 * provider from its compiled file by path. The dynamic-provider plugin
 * (pulumi-resource-pulumi-nodejs) requires this text and calls its handler(),
 * as it does with the closure pulumi.dynamic.Resource serializes; that closure
 * (about 2 KB) was stored twice, inputs and outputs, in every resource's state,
 * and serializing it loads the closure serializer (TypeScript) into the program.
 */
export function providerModule(modulePath: string): string {
  return `exports.handler = () => require(${JSON.stringify(modulePath)}).provider;\n`;
}

/**
 * A dynamic resource (type `pulumi-nodejs:dynamic/vse:<type>`, as pulumi.dynamic.Resource
 * names it, so existing stacks keep their URNs) whose provider is the module at modulePath's
 * export `provider`. States written with the serialized closure keep working: the plugin
 * runs whichever `__provider` a state holds, and both load the same module.
 */
export class ModuleProviderResource extends CustomResource {
  constructor(type: string, modulePath: string, name: string, props: pulumi.Inputs, opts?: pulumi.CustomResourceOptions) {
    super(
      `pulumi-nodejs:dynamic/vse:${type}`,
      name,
      { ...props, __provider: providerModule(modulePath) },
      { ...opts, hideDiffs: ["__provider", ...(opts?.hideDiffs ?? [])] },
    );
  }
}
