/** Types of tests/support/regenerate.js (plain JavaScript, so that scripts/gen-types.js uses the same guard). */
type Env = Record<string, string | undefined>;
/** Whether env says we run under CI (CI=true; any value but "", "0" or "false"). */
export function underCI(env?: Env): boolean;
/** Throws when running under CI: what (e.g. "UPDATE_GOLDEN=1") would rewrite files that CI only checks. */
export function refuseUnderCI(what: string, env?: Env): void;
/** Whether the regenerate switch varName asks to rewrite files ("1"); throws under CI when it is set at all. */
export function regenerateAllowed(varName: string, env?: Env): boolean;
