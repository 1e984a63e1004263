import * as fs from "fs";
import * as path from "path";
import { lifecycleMarkdown } from "../../provider/model/lifecycle-doc";
import { regenerateAllowed } from "../support/regenerate";

const DOC = path.join(__dirname, "..", "..", "docs", "lifecycle.md");

test("docs/lifecycle.md is generated from the lifecycle table (UPDATE_DOCS=1 rewrites it, outside CI)", () => {
  if (regenerateAllowed("UPDATE_DOCS")) fs.writeFileSync(DOC, lifecycleMarkdown());
  expect(fs.readFileSync(DOC, "utf8")).toBe(lifecycleMarkdown());
});
