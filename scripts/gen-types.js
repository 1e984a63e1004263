#!/usr/bin/env node
// Generates provider/model/types.generated.ts from schema/*.schema.json.
// `--check` exits non-zero when the checked-in file differs (used by the tests).
// Without --check it rewrites the file, which CI only checks: under CI=true it refuses.
"use strict";
const fs = require("fs");
const path = require("path");
const { refuseUnderCI } = require("../tests/support/regenerate");

const check = process.argv.includes("--check");
if (!check) {
  try {
    refuseUnderCI("scripts/gen-types.js (without --check)");
  } catch (err) {
    console.error(err.message);
    process.exit(1);
  }
}
const { compile } = require("json-schema-to-typescript");

const root = path.resolve(__dirname, "..");
const schemaDir = path.join(root, "schema");
const out = path.join(root, "provider", "model", "types.generated.ts");
const kinds = ["environment", "vmprofile", "virtualcluster", "sitepolicy"];

async function generate() {
  const parts = ["/* eslint-disable */\n// DO NOT EDIT: generated from schema/*.schema.json by scripts/gen-types.js (npm run gen).\n"];
  for (const [i, kind] of kinds.entries()) {
    const schema = JSON.parse(fs.readFileSync(path.join(schemaDir, `${kind}.schema.json`), "utf8"));
    const ts = await compile(schema, schema.title, {
      cwd: schemaDir,
      bannerComment: "",
      additionalProperties: false,
      // Shared definitions (common.schema.json) are declared once, with the first kind.
      declareExternallyReferenced: i === 0,
      style: { singleQuote: false, printWidth: 100 },
    });
    parts.push(ts);
  }
  return parts.join("\n").replace(/\n{3,}/g, "\n\n");
}
generate().then(
  (text) => {
    if (check) {
      const current = fs.existsSync(out) ? fs.readFileSync(out, "utf8") : "";
      if (current !== text) {
        console.error(`${path.relative(root, out)} is out of date: run npm run gen`);
        process.exit(1);
      }
      return;
    }
    fs.writeFileSync(out, text);
  },
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
