// The client says when the page is not live: a stream that does not answer (a WSGI server), an
// answer that is not an event stream (a login page, an error page, a 404), a stylesheet that
// did not load; and it clears the message once the stream is live again.
// Run with `node --test tests/js/` (tests/test_js.py does, from pytest); no npm packages.
import assert from "node:assert/strict";
import { test } from "node:test";

import { FakeEventSource, load } from "./support/fake-browser.mjs";
import { SCRIPT_MISSING, bar, emit, visible } from "./support/markup.mjs";

const OPEN_TIMEOUT_MS = 5000;
const STALLED = "Live updates are unavailable: the server does not answer.";
const UNAVAILABLE = "Live updates are unavailable: the server did not send them.";
const STOPPED = "Live updates stopped. Reload the page to see the latest.";
const NO_STYLESHEET = "The progress bar cannot be drawn: its stylesheet did not load.";

function page(options = {}, barOptions = {}) {
  const browser = load(options);
  const rendered = bar(barOptions);
  browser.page.children.push(rendered.element);
  rendered.element.parent = browser.page;
  return { ...browser, ...rendered };
}

function connectionOf(element) {
  return element.getAttribute("data-django-sse-connection");
}

test("binding replaces the tag's 'script did not load' text", () => {
  const running = page();
  assert.equal(visible(running.parts.connection), SCRIPT_MISSING); // as rendered
  running.domReady();
  assert.equal(visible(running.parts.connection), "");
  assert.equal(connectionOf(running.element), "connecting");
});

test("no answer within a few seconds: the bar says so, the console says what to check", () => {
  const { domReady, clock, sources, parts, element, warnings, errors } = page();
  domReady();
  clock.tick(OPEN_TIMEOUT_MS - 1);
  assert.equal(visible(parts.connection), "");
  clock.tick(1);
  assert.equal(visible(parts.connection), STALLED);
  assert.equal(connectionOf(element), "stalled");
  assert.equal(warnings.length, 1);
  assert.match(warnings[0][0], /no answer from https:\/\/app\.example\/sse\/events\/\?jobs=/);
  assert.match(warnings[0][0], /WSGI server/);
  assert.match(warnings[0][0], /put 'daphne' first in INSTALLED_APPS/);
  assert.deepEqual(errors, []);
  // The server answers after all (it was only slow): the message goes.
  sources[0].open();
  assert.equal(visible(parts.connection), "");
  assert.equal(connectionOf(element), "open");
  emit(sources[0], "progress", 3, { current: 1, total: 2 });
  assert.equal(visible(parts.percent), "50%");
});

test("an answer that is not an event stream: unavailable, and the console says why", () => {
  const { domReady, sources, parts, element, errors } = page();
  domReady();
  // A login page, an HTML error, a 404: EventSource fails for good without ever opening.
  sources[0].fail(FakeEventSource.CLOSED);
  assert.equal(visible(parts.connection), UNAVAILABLE);
  assert.equal(connectionOf(element), "unavailable");
  assert.equal(errors.length, 1);
  assert.match(errors[0][0], /did not answer with an event stream/);
  assert.match(errors[0][0], /login page/);
  assert.match(errors[0][0], /daphne/);
  assert.equal(sources.length, 1); // no retry of its own
});

test("refused after it was live: stopped, and no console error", () => {
  const { domReady, sources, parts, errors } = page();
  domReady();
  sources[0].open();
  sources[0].fail(FakeEventSource.CLOSED);
  assert.equal(visible(parts.connection), STOPPED);
  assert.deepEqual(errors, []);
});

test("a dropped connection says Reconnecting… and clears once live again", () => {
  const { domReady, clock, sources, parts, warnings } = page();
  domReady();
  sources[0].open();
  sources[0].fail(FakeEventSource.CONNECTING);
  assert.equal(visible(parts.connection), "Reconnecting…");
  clock.tick(3 * OPEN_TIMEOUT_MS);
  assert.equal(visible(parts.connection), "Reconnecting…"); // not "stalled": it was live
  sources[0].open();
  assert.equal(visible(parts.connection), "");
  assert.deepEqual(warnings, []);
});

test("a first connection refused at the network level retries without a stalled warning", () => {
  const { domReady, clock, sources, parts, warnings } = page();
  domReady();
  sources[0].fail(FakeEventSource.CONNECTING); // e.g. the server is restarting
  clock.tick(2 * OPEN_TIMEOUT_MS);
  assert.equal(visible(parts.connection), "Reconnecting…");
  assert.deepEqual(warnings, []);
});

test("a finished job opens nothing and shows no connection text", () => {
  const { domReady, sources, parts } = page({}, { status: "succeeded" });
  domReady();
  assert.equal(sources.length, 0);
  assert.equal(visible(parts.connection), "");
});

test("the stylesheet did not load: the bar says so once the page has loaded", () => {
  const { domReady, loadPage, clock, sources, parts, errors } = page({
    stylesheet: { loaded: false },
  });
  domReady();
  assert.equal(visible(parts.connection), ""); // it may still be loading
  loadPage();
  assert.equal(visible(parts.connection), NO_STYLESHEET);
  assert.equal(errors.length, 1);
  assert.match(errors[0][0], /stylesheet https:\/\/app\.example\/static\/django_sse\//);
  assert.match(errors[0][0], /collectstatic/);
  // A connection worth a word says it first; then the stylesheet again.
  clock.tick(OPEN_TIMEOUT_MS);
  assert.equal(visible(parts.connection), STALLED);
  sources[0].open();
  assert.equal(visible(parts.connection), NO_STYLESHEET);
});

test("a stylesheet that loaded, or none linked by the tag, says nothing", () => {
  for (const stylesheet of [{ loaded: true }, undefined]) {
    const { domReady, loadPage, parts, errors } = page({ stylesheet });
    domReady();
    loadPage();
    assert.equal(visible(parts.connection), "");
    assert.deepEqual(errors, []);
  }
});

test("watch() reports 'stalled' while the stream does not answer, then 'open'", () => {
  const { DjangoSSE, clock, sources } = load();
  const states = [];
  DjangoSSE.watch("/sse/jobs/6f1c2a4e-0000-4000-8000-000000000001/events/", {
    onStatus: (state) => states.push(state),
  });
  clock.tick(OPEN_TIMEOUT_MS);
  sources[0].open();
  assert.deepEqual(states, ["connecting", "stalled", "open"]);
});

test("a finished bar beside a running one says nothing about the connection", () => {
  // Both on one stream (finished jobs are listed so that tabs share it): only the running
  // bar is not live; the finished one already shows all there is.
  const browser = load();
  const running = bar();
  const finished = bar({
    status: "succeeded",
    attributes: { "data-django-sse-job": "6f1c2a4e-0000-4000-8000-000000000002" },
  });
  for (const rendered of [running, finished]) {
    browser.page.children.push(rendered.element);
    rendered.element.parent = browser.page;
  }
  browser.domReady();
  assert.equal(browser.sources.length, 1);
  browser.clock.tick(OPEN_TIMEOUT_MS);
  assert.equal(visible(running.parts.connection), STALLED);
  assert.equal(visible(finished.parts.connection), "");
  assert.equal(connectionOf(finished.element), "closed");
  browser.sources[0].open();
  browser.sources[0].fail(FakeEventSource.CONNECTING);
  assert.equal(visible(running.parts.connection), "Reconnecting…");
  assert.equal(visible(finished.parts.connection), "");
});
