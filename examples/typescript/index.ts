// A Pulumi TypeScript program that declares a virtual cluster with the library
// API instead of YAML. The objects are validated exactly as YAML definitions are
// (schema, units, references, site policy): a typo fails `pulumi preview` with
// the field that is wrong.
import * as pulumi from "@pulumi/pulumi";
import { Environment, VirtualCluster, VmProfile } from "vse-provider";

// Optional stack config, as for the YAML program: where images are cached
// (default ~/.cache/vse-provider) and where the node agents keep their state
// (default ~/.local/state/vse-provider).
const cfg = new pulumi.Config("vse");

const env = new Environment("ts-sum", {
  description: "Tiny VSE whose job adds two numbers",
  spec: {
    base: "busybox",
    job: { command: ["/bin/sh", "-c", "echo $((2+3))"], afterJob: "stay-up", timeoutSeconds: 120 },
  },
  cacheDir: cfg.get("cacheDir"),
});

// accel: tcg runs anywhere; "auto" uses KVM when a probe boot under KVM succeeds.
const profile = new VmProfile("ts-small", { spec: { memory: "256MiB", vcpus: 1, machine: "pc", accel: "tcg" } });

const cluster = new VirtualCluster("ts-cluster", {
  environment: env,
  profile,
  nodes: 2,
  allocation: { manager: "local", hosts: 2 },
  // VM 1 gets more memory than the profile gives.
  overrides: [{ vm: 1, memory: "384MiB" }],
  // What a site administrator would otherwise put in a SitePolicy document.
  policy: { limits: { maxMemory: "1GiB", maxVcpus: 4, maxNodesPerCluster: 8 }, forbiddenKernelArgs: ["init=*"] },
  stateRoot: cfg.get("stateDir"),
});

export const vms = cluster.vms.map((vm) => ({ name: vm.urn, status: vm.status, output: vm.jobOutput }));
export const configs = cluster.vms.map((vm) => vm.config);
