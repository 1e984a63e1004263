/** Where in which file a problem is, and what was expected there. */
export interface DefinitionProblem {
  file: string;
  line: number;
  column: number;
  /** JSON-pointer-like path of the field, e.g. "spec.profile". */
  field: string;
  message: string;
}

export function formatProblem(p: DefinitionProblem): string {
  const field = p.field ? `${p.field}: ` : "";
  return `${p.file}:${p.line}:${p.column}: ${field}${p.message}`;
}

/** Raised when definitions are invalid; carries every problem found, not just the first. */
export class DefinitionError extends Error {
  constructor(readonly problems: DefinitionProblem[]) {
    super(problems.map(formatProblem).join("\n"));
    this.name = "DefinitionError";
  }
}
