// The one guard for every switch that rewrites a checked-in file from the code
// (UPDATE_GOLDEN=1, UPDATE_DOCS=1, scripts/gen-types.js without --check). Such
// files are checked by CI; if CI could rewrite them, the check would pass
// vacuously, so under CI these switches fail loudly instead.
"use strict";

/** Whether env says we run under CI (CI=true, as .ci/run sets it; any value but "", "0" or "false"). */
function underCI(env = process.env) {
  const v = env.CI;
  return v !== undefined && v !== "" && v !== "0" && v.toLowerCase() !== "false";
}

/** Throws when running under CI: what (e.g. "UPDATE_GOLDEN=1") would rewrite files that CI only checks. */
function refuseUnderCI(what, env = process.env) {
  if (underCI(env)) {
    throw new Error(
      `${what} rewrites checked-in files that CI checks, and CI=${env.CI} is set: refused, so that CI can never rewrite what it checks. ` +
        "Regenerate locally, review the diff and commit it; in CI, only check.",
    );
  }
}

/**
 * Whether the regenerate switch varName (e.g. "UPDATE_GOLDEN") asks to rewrite files: true for "1".
 * Throws under CI when the switch is set at all (any value but "" or "0"), rather than silently ignoring it.
 */
function regenerateAllowed(varName, env = process.env) {
  const v = env[varName];
  if (v === undefined || v === "" || v === "0") return false;
  refuseUnderCI(`${varName}=${v}`, env);
  return v === "1";
}

module.exports = { underCI, refuseUnderCI, regenerateAllowed };
