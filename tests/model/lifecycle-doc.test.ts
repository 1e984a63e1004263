import * as fs from "fs";
import * as path from "path";
import { lifecycleMarkdown } from "../../provider/model/lifecycle-doc";

const DOC = path.join(__dirname, "..", "..", "docs", "lifecycle.md");

test("docs/lifecycle.md is generated from the lifecycle table", () => {
  if (process.env.UPDATE_DOCS === "1") fs.writeFileSync(DOC, lifecycleMarkdown());
  expect(fs.readFileSync(DOC, "utf8")).toBe(lifecycleMarkdown());
});
