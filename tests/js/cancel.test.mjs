// The client's Cancel button sends the CSRF token only to the page's own origin.
// Run with `node --test tests/js/` (tests/test_js.py does, from pytest); no npm packages.
import assert from "node:assert/strict";
import { test } from "node:test";

import { FakeElement, PAGE, load } from "./support/fake-browser.mjs";

const JOB = "6f1c2a4e-0000-4000-8000-000000000001";

// A finished job (so bind() opens no stream) with a Cancel button and an error line.
function jobWithCancel(cancelUrl) {
  const button = new FakeElement({
    "data-django-sse-bind": "cancel",
    "data-django-sse-cancel-url": cancelUrl,
  });
  const error = new FakeElement({ "data-django-sse-bind": "error" });
  const job = new FakeElement(
    {
      "data-django-sse-job": JOB,
      "data-django-sse-url": "/sse/events/",
      "data-django-sse-status": "succeeded",
    },
    [button, error]
  );
  return { page: new FakeElement({}, [job]), button, error };
}

async function click(button) {
  await button.listeners.get("click")({ preventDefault() {} });
}

test("a cancel URL of the page's origin resolves against the page", () => {
  const { DjangoSSE } = load();
  const page = { href: PAGE, origin: "https://app.example" };
  assert.equal(
    DjangoSSE._sameOriginUrl(`/sse/jobs/${JOB}/cancel/`, page),
    `https://app.example/sse/jobs/${JOB}/cancel/`
  );
  assert.equal(
    DjangoSSE._sameOriginUrl("cancel/", page),
    "https://app.example/reports/cancel/"
  );
  assert.equal(
    DjangoSSE._sameOriginUrl("https://app.example/x/", page),
    "https://app.example/x/"
  );
});

test("a cancel URL of another origin is refused", () => {
  const { DjangoSSE } = load();
  const page = { href: PAGE, origin: "https://app.example" };
  for (const url of [
    "https://evil.example/x/",
    "//evil.example/x/",
    "http://app.example/x/", // another scheme
    "https://app.example:8443/x/", // another port
    "https://app.example.evil.example/x/",
    "javascript:alert(1)",
    "data:text/plain,x",
    "http://[", // not a URL at all
  ]) {
    assert.equal(DjangoSSE._sameOriginUrl(url, page), null, url);
  }
});

test("the check reads the page's location by default", () => {
  const { DjangoSSE } = load();
  assert.equal(DjangoSSE._sameOriginUrl("/x/"), "https://app.example/x/");
  assert.equal(DjangoSSE._sameOriginUrl("https://evil.example/x/"), null);
});

test("cancel posts the CSRF token to a same-origin URL", async () => {
  const { DjangoSSE, fetched, errors } = load();
  const { page, button } = jobWithCancel(`/sse/jobs/${JOB}/cancel/`);
  DjangoSSE.bind(page);
  await click(button);
  assert.equal(fetched.length, 1);
  assert.equal(fetched[0].url, `https://app.example/sse/jobs/${JOB}/cancel/`);
  assert.equal(fetched[0].init.method, "POST");
  assert.equal(fetched[0].init.headers["X-CSRFToken"], "s3cret-token");
  assert.deepEqual(errors, []);
});

test("cancel to another origin sends nothing, logs and shows the failure", async () => {
  const { DjangoSSE, fetched, errors } = load();
  const { page, button, error } = jobWithCancel("https://evil.example/steal/");
  DjangoSSE.bind(page);
  await click(button);
  assert.deepEqual(fetched, []);
  assert.equal(errors.length, 1);
  assert.match(errors[0][0], /data-django-sse-cancel-url/);
  assert.equal(error.textContent, "The job could not be cancelled.");
  assert.equal(error.hidden, false);
  assert.equal(button.disabled, false);
});
