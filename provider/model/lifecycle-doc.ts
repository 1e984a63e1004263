import { LIFECYCLE, VM_INPUT_POLICY } from "./lifecycle";

/** The lifecycle table as Markdown, for docs/lifecycle.md (kept in sync by a test). */
export function lifecycleMarkdown(): string {
  const rows = Object.entries(LIFECYCLE).map(([field, r]) => `| \`${field}\` | ${r.policy} | ${r.vmInput ? `\`${r.vmInput}\`` : ""} | ${r.why} |`);
  const inputs = Object.entries(VM_INPUT_POLICY).map(([k, p]) => `| \`${k}\` | ${p} |`);
  return [
    "# What a change does",
    "",
    "<!-- Generated from provider/model/lifecycle.ts by tests/model/lifecycle-doc.test.ts (UPDATE_DOCS=1 to rewrite). -->",
    "",
    "`in-place`: applied without touching the running guest. `restart`: the VM's QEMU process is restarted with the new config (the VM keeps its identity; `pulumi preview` shows an update). `replace`: the VM is deleted and created anew (`pulumi preview` shows a replace).",
    "",
    "A field ending in `.*` is a block: the row holds for every field under it that has no row of its own.",
    "",
    "| field | change | VM input | why |",
    "|---|---|---|---|",
    ...rows,
    "",
    "A VM's change is the strongest policy among its changed inputs:",
    "",
    "| VirtualMachine input | change |",
    "|---|---|",
    ...inputs,
    "",
  ].join("\n");
}
