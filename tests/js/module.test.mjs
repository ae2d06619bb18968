// The ES module entry point, django_sse.mjs: what it exports, and that it is the client.
// Run with `node --test tests/js/` (tests/test_js.py does, from pytest); no npm packages.
import assert from "node:assert/strict";
import { test } from "node:test";

import { importModule, MODULE_URL } from "./support/fake-browser.mjs";
import { JOB, bar, emit, visible } from "./support/markup.mjs";

// Must run first: the other tests leave a fake page on the global object.
test("imported without a page (server-side rendering), it binds nothing, sets no global", async () => {
  assert.equal(typeof globalThis.document, "undefined");
  const module = await import(`${MODULE_URL.href}?instance=no-page`);
  assert.equal(typeof globalThis.DjangoSSE, "undefined");
  assert.deepEqual(Object.keys(module).sort(), [
    "LIFECYCLE_TYPES",
    "TERMINAL_TYPES",
    "bind",
    "default",
    "watch",
  ]);
  // The named exports are the default export's members, as the classic script's DjangoSSE.
  assert.equal(module.watch, module.default.watch);
  assert.equal(module.bind, module.default.bind);
  assert.equal(module.LIFECYCLE_TYPES, module.default.LIFECYCLE_TYPES);
  assert.equal(module.TERMINAL_TYPES, module.default.TERMINAL_TYPES);
  assert.deepEqual(module.TERMINAL_TYPES, ["succeeded", "failed", "cancelled"]);
  assert.equal(module.LIFECYCLE_TYPES.length, 6);
  assert.ok(Object.isFrozen(module.default));
  assert.ok(Object.isFrozen(module.LIFECYCLE_TYPES));
  assert.ok(Object.isFrozen(module.TERMINAL_TYPES));
});

test("watch() from the module follows a job's stream to its end", async () => {
  const { module, sources } = await importModule();
  const seen = [];
  const watcher = module.watch(`/sse/jobs/${JOB}/events/`, {
    lastEventId: 3,
    share: false,
    onProgress: (data) => seen.push(["progress", data]),
    onSuccess: (result) => seen.push(["succeeded", result]),
    onStatus: (state) => seen.push(["status", state]),
  });
  assert.equal(sources.length, 1);
  assert.equal(sources[0].url, `https://app.example/sse/jobs/${JOB}/events/?last_event_id=3`);
  sources[0].open();
  sources[0].emit("progress", { current: 4, total: 8, message: "Half" }, "4");
  assert.equal(watcher.lastEventId, "4");
  sources[0].emit("succeeded", { result: { rows: 8 } }, "5");
  assert.deepEqual(seen, [
    ["status", "connecting"],
    ["status", "open"],
    ["progress", { current: 4, total: 8, message: "Half" }],
    ["status", "closed"],
    ["succeeded", { rows: 8 }],
  ]);
  assert.equal(sources[0].closed, true);
  assert.equal(watcher.state, "closed");
});

test("the module binds the page's bars once the page is parsed, as the script does", async () => {
  const browser = await importModule();
  const rendered = bar();
  browser.page.children.push(rendered.element);
  rendered.element.parent = browser.page;
  assert.equal(browser.sources.length, 0); // the page is still loading
  browser.domReady();
  assert.equal(browser.sources.length, 1);
  const stream = new URL(browser.sources[0].url);
  assert.equal(stream.pathname, "/sse/events/");
  assert.equal(stream.searchParams.get("jobs"), JOB);
  browser.sources[0].open();
  emit(browser.sources[0], "progress", 3, { current: 1, total: 2, message: "One of two" });
  assert.equal(visible(rendered.parts.percent), "50%");
  assert.equal(visible(rendered.parts.message), "One of two");
  const [event, typed] = rendered.element.dispatched;
  assert.equal(event.type, "django-sse:event");
  assert.equal(typed.type, "django-sse:progress");
  assert.deepEqual(event.detail, {
    job: JOB,
    seq: 3,
    type: "progress",
    data: { current: 1, total: 2, message: "One of two" },
  });
  emit(browser.sources[0], "succeeded", 4, { result: null });
  assert.equal(visible(rendered.parts.message), "Done");
  assert.equal(browser.sources[0].closed, true);
});
