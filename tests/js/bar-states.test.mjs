// What a bar says as its job runs and ends: a finished bar says how it ended, and "Stopping…"
// lasts only while a cancel is pending and the job runs.
// Run with `node --test tests/js/` (tests/test_js.py does, from pytest); no npm packages.
import assert from "node:assert/strict";
import { test } from "node:test";

import { load } from "./support/fake-browser.mjs";
import { bar, emit, visible } from "./support/markup.mjs";

// A running bar bound to a stream that has opened.
function live(options) {
  const browser = load();
  const rendered = bar(options);
  browser.page.children.push(rendered.element);
  rendered.element.parent = browser.page;
  browser.domReady();
  assert.equal(browser.sources.length, 1);
  const source = browser.sources[0];
  source.open();
  return { ...browser, ...rendered, source };
}

test("a succeeded job's bar says Done instead of its last progress message", () => {
  const { source, parts, element } = live();
  emit(source, "progress", 3, { current: 3, total: 3, message: "Reading orders" });
  assert.equal(visible(parts.message), "Reading orders");
  emit(source, "succeeded", 4, { result: { rows: 3 } });
  assert.equal(element.getAttribute("data-django-sse-status"), "succeeded");
  assert.equal(visible(parts.status), "Succeeded");
  assert.equal(visible(parts.message), "Done");
  assert.equal(visible(parts.percent), "100%");
  assert.equal(source.closed, true); // nothing more to follow
});

test("a cancel the task ignores: Stopping… gives way to the final state", () => {
  const { source, parts, element } = live();
  emit(source, "progress", 3, { current: 1, total: 4, message: "Step 1" });
  emit(source, "cancel_requested", 4, {});
  assert.equal(visible(parts.message), "Stopping…");
  // The task does not check job.cancel_requested(): it goes on, and succeeds.
  emit(source, "progress", 5, { current: 4, total: 4, message: "Step 4" });
  assert.equal(visible(parts.message), "Stopping…");
  emit(source, "succeeded", 6, { result: null });
  assert.equal(visible(parts.status), "Succeeded");
  assert.equal(visible(parts.message), "Done");
  assert.equal(element.hasAttribute("data-django-sse-cancel-requested"), false);
});

test("a cancel pending when the page was rendered ends the same way", () => {
  const { source, parts } = live({
    attributes: { "data-django-sse-cancel-requested": "" },
  });
  parts.message.textContent = "Stopping…"; // as rendered
  emit(source, "progress", 3, { current: 2, total: 4, message: "Step 2" });
  assert.equal(visible(parts.message), "Stopping…");
  emit(source, "failed", 4, { error: "The orders table did not answer." });
  assert.equal(visible(parts.message), "Failed: The orders table did not answer.");
});

test("a cancelled job says Cancelled", () => {
  const { source, parts } = live();
  emit(source, "cancel_requested", 3, {});
  emit(source, "cancelled", 4, {});
  assert.equal(visible(parts.status), "Cancelled");
  assert.equal(visible(parts.message), "Cancelled");
});

test("a failed job says why in its message, once", () => {
  const { source, parts } = live();
  emit(source, "progress", 3, { current: 1, total: 4, message: "Step 1" });
  emit(source, "failed", 4, { error: "<b>No</b> data" });
  assert.equal(visible(parts.status), "Failed");
  assert.equal(visible(parts.message), "Failed: <b>No</b> data"); // text, never HTML
  assert.equal(visible(parts.error), "");
});

test("a failure without an error message says Failed", () => {
  const { source, parts } = live();
  emit(source, "failed", 3, {});
  assert.equal(visible(parts.message), "Failed");
});

test("markup without a message part shows the error in its error part", () => {
  const { source, parts } = live({ without: ["message"] });
  emit(source, "failed", 3, { error: "No data" });
  assert.equal(visible(parts.error), "No data");
});

test("the page's translated words are used", () => {
  const labels = {
    done: "Fertig",
    failed_error: "Fehlgeschlagen: {error}",
    succeeded: "Erfolgreich",
  };
  const { source, parts } = live({
    attributes: { "data-django-sse-labels": JSON.stringify(labels) },
  });
  emit(source, "succeeded", 3, {});
  assert.equal(visible(parts.status), "Erfolgreich");
  assert.equal(visible(parts.message), "Fertig");
});
