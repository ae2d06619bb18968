// The markup {% django_sse_progress %} renders, as fake elements, and the all-jobs stream's
// events for it. Not a test file (see fake-browser.mjs).
import { FakeElement } from "./fake-browser.mjs";

export const JOB = "6f1c2a4e-0000-4000-8000-000000000001";
export const SCRIPT_MISSING =
  "Live updates are unavailable: the page’s script did not load. " +
  "Reload the page to see the latest.";

// A bar as the tag renders it; `attributes` add to or replace the job element's attributes,
// `without` leaves parts out.
export function bar({ status = "running", seq = 2, attributes = {}, without = [] } = {}) {
  const parts = {};
  for (const name of ["status", "progress", "percent", "message", "connection", "error"]) {
    if (!without.includes(name)) {
      parts[name] = new FakeElement({ "data-django-sse-bind": name });
    }
  }
  const finished = !["pending", "running"].includes(status);
  if (parts.connection) {
    parts.connection.textContent = finished ? "" : SCRIPT_MISSING;
    parts.connection.hidden = finished;
  }
  const element = new FakeElement(
    {
      "data-django-sse-job": JOB,
      "data-django-sse-seq": String(seq),
      "data-django-sse-status": status,
      "data-django-sse-url": "/sse/events/",
      "data-django-sse-horizon": "1700000000",
      ...attributes,
    },
    Object.values(parts)
  );
  return { element, parts };
}

// One event of the all-jobs stream: its data is the envelope {job, seq, data}.
export function emit(source, type, seq, data) {
  source.emit(type, { job: JOB, seq, data }, `1.6f1c2a4e${seq.toString(36)}`);
}

export function visible(part) {
  return part.hidden ? "" : part.textContent;
}
