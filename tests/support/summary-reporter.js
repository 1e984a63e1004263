// Prints the plain closing line CI reads, after Jest's own summary:
//
//   tests: N passed, N failed
//
// alone on its line, nothing after it. A suite that failed outside its tests (an
// error in beforeAll/afterAll, a compile error, a module that throws when imported,
// a file with no tests) has no failing test, yet the run failed: each such suite
// counts as one failure, so the line can never say "0 failed" for a failed run.
// What the counts include is said on the line before, in parentheses, so that the
// last line keeps its exact form (a suffix would break a parser anchored at the end).
"use strict";

/** The closing lines for jest's aggregated results: details (possibly none), then the "tests: N passed, N failed" line. */
function summaryLines(results) {
  const withFailingTests = results.testResults.filter((r) => r.numFailingTests > 0).length;
  const failedOutside = results.testResults.filter((r) => r.numFailingTests === 0 && (r.testExecError !== undefined || Boolean(r.failureMessage))).length;
  // Jest's own count of failed suites, in case a failed suite carries no message.
  const suitesFailedOutside = Math.max(failedOutside, results.numFailedTestSuites - withFailingTests);
  const failed = results.numFailedTests + suitesFailedOutside;
  const skipped = results.numPendingTests + results.numTodoTests;
  const notes = [];
  if (suitesFailedOutside) {
    notes.push(
      `${suitesFailedOutside} suite${suitesFailedOutside === 1 ? "" : "s"} failed outside ${suitesFailedOutside === 1 ? "its" : "their"} tests, counted as failed`,
    );
  }
  if (skipped) notes.push(`${skipped} skipped`);
  const lines = [];
  if (notes.length) lines.push(`(${notes.join("; ")})`);
  lines.push(`tests: ${results.numPassedTests} passed, ${failed} failed`);
  return lines;
}

class SummaryReporter {
  onRunComplete(_contexts, results) {
    process.stdout.write(`\n${summaryLines(results).join("\n")}\n`);
  }
}
module.exports = SummaryReporter;
module.exports.summaryLines = summaryLines;
