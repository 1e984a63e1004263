// The site's policy: installed by the site with its node agents (a file), not
// written in a user's definitions. The agent enforces it on every request and
// serves it (GET /v1/policy); `vse validate/plan` and the Pulumi program load
// the same file to report the same violations early. A SitePolicy in a user's
// definitions is checked as well, so it can only narrow the site's, never
// widen it.
import * as fs from "fs";
import * as path from "path";
import { DefinitionError, DefinitionProblem } from "./errors";
import { Located, loadDefinitions, loadObject } from "./load";
import type { SitePolicy } from "./types.generated";

/** Where a host's site policy lives by default: beside the agents' state (`<stateRoot>/site-policy.yaml`). */
export function sitePolicyFile(stateRoot: string): string {
  return path.join(stateRoot, "site-policy.yaml");
}

/** The embedded local default when the site installed none: no limits beyond the schema's bounds. */
export const PERMISSIVE_SITE_POLICY: SitePolicy = {
  apiVersion: "vse.dev/v1",
  kind: "SitePolicy",
  metadata: { name: "local-default", description: "No site policy is installed: only the schema's bounds apply." },
  spec: {},
};

const unlocatedPolicies = new WeakSet<object>();

/** A policy document with no file behind it (the permissive default, or one received from an agent): its rules have no line to point at. */
export function unlocated(doc: SitePolicy, source: string): Located<SitePolicy> {
  const l = { doc, file: source, at: () => ({ line: 1, column: 1 }) };
  unlocatedPolicies.add(l);
  return l;
}

export function isUnlocated(l: Located<SitePolicy>): boolean {
  return unlocatedPolicies.has(l);
}

/** Validates a policy object (e.g. from GET /v1/policy) as a SitePolicy document; throws DefinitionError naming the field. */
export function sitePolicyFromObject(value: unknown, source: string): Located<SitePolicy> {
  const defs = { environments: new Map(), profiles: new Map(), clusters: new Map(), policies: new Map<string, Located<SitePolicy>>() };
  const problems: DefinitionProblem[] = [];
  loadObject(value, source, defs, problems);
  const policy = [...defs.policies.values()][0];
  if (!problems.length && !policy) problems.push({ file: source, line: 1, column: 1, field: "kind", message: `expected a SitePolicy document` });
  if (problems.length) throw new DefinitionError(problems);
  return unlocated(policy.doc, source);
}

/**
 * The site policy in force for a state root or an explicit file: the file when
 * it exists, else the permissive local default. An explicit file that does not
 * exist is an error (a site that names a policy must have it).
 */
export function loadSitePolicy(opts: { file?: string; stateRoot?: string }): Located<SitePolicy> {
  const file = opts.file ?? (opts.stateRoot ? sitePolicyFile(opts.stateRoot) : undefined);
  if (!file || (!opts.file && !fs.existsSync(file))) return unlocated(PERMISSIVE_SITE_POLICY, "(embedded local default)");
  if (!fs.existsSync(file)) {
    throw new DefinitionError([{ file, line: 1, column: 1, field: "sitePolicy", message: "the site policy file does not exist" }]);
  }
  const defs = loadDefinitions([file]);
  const docs = [...defs.environments.values(), ...defs.profiles.values(), ...defs.clusters.values()];
  const problems: DefinitionProblem[] = docs.map((l) => ({
    file: l.file,
    ...l.at(["kind"]),
    field: "kind",
    message: "a site policy file holds one SitePolicy document and nothing else",
  }));
  const policies = [...(defs.policies?.values() ?? [])];
  if (policies.length !== 1)
    problems.push({ file, line: 1, column: 1, field: "kind", message: `expected exactly one SitePolicy document, found ${policies.length}` });
  if (problems.length) throw new DefinitionError(problems);
  return policies[0];
}
