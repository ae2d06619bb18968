// A front-end build's use of the client, checked by tsc --noEmit against django_sse.d.ts (see
// tests/test_js.py, which installs the client into node_modules by path). Every
// `@ts-expect-error` line is a misuse the types must reject: tsc fails if one is accepted.
import DjangoSSE, {
  bind,
  LIFECYCLE_TYPES,
  TERMINAL_TYPES,
  watch,
  type ConnectionState,
  type Feed,
  type JobEventDetail,
  type JobSnapshot,
  type JSONValue,
  type LifecycleType,
  type ProgressData,
  type Watcher,
  type WatcherState,
} from "django-sse-jobs";

const JOB = "6f1c2a4e-0000-4000-8000-000000000001";

// -- render the snapshot, then stream from its last_seq ---------------------------------------

async function follow(job: string): Promise<Watcher> {
  const response = await fetch(`/sse/jobs/${job}/`, { credentials: "same-origin" });
  const snapshot = (await response.json()) as JobSnapshot;
  render(snapshot.status, snapshot.percent, snapshot.message);
  return watch(`/sse/jobs/${job}/events/`, {
    lastEventId: snapshot.last_seq,
    events: ["log"],
    share: true,
    withCredentials: false,
    onEvent(type: string, data: unknown, id: string | null) {
      if (type === "log" && typeof data === "object" && data !== null) {
        console.log(id, data);
      }
    },
    onStart(data) {
      console.log("started", Object.keys(data));
    },
    onProgress({ current, total, message }: ProgressData) {
      render("running", total === null ? null : (100 * current) / total, message);
    },
    onSuccess(result: JSONValue) {
      console.log("result", result);
    },
    onFailure(error: string) {
      render("failed", null, error.toUpperCase());
    },
    onCancelRequested() {
      render("running", null, "Stopping…");
    },
    onCancel() {
      render("cancelled", null, "");
    },
    onStatus(state: WatcherState) {
      if (state === "stalled" || state === "reconnecting") {
        console.warn(state);
      }
    },
  });
}

function render(status: JobSnapshot["status"], percent: number | null, message: string): void {
  document.title = `${status} ${percent ?? "?"}% ${message}`;
}

// -- the all-jobs stream ------------------------------------------------------------------------

const session: Watcher = watch(new URL("/sse/events/", location.href), {
  kind: "session",
  identity: "tag-of-this-login",
  onEvent(type, data, id, job: string, seq: number | null) {
    console.log(type, data, id, job.toUpperCase(), seq === null ? -1 : seq + 1);
  },
});
const where: string | number | null = session.lastEventId;
const now: WatcherState = session.state;
session.close();
console.log(where, now);

// -- bars bound by attributes, and their DOM events ---------------------------------------------

const feeds: Feed[] = bind(document.body);
feeds.forEach((feed) => feed.close());
DjangoSSE.bind(document);

document.addEventListener("django-sse:progress", (event) => {
  const data: ProgressData = event.detail.data;
  const seq: number = event.detail.seq;
  const type: "progress" = event.detail.type;
  console.log(data.current, seq, type);
});
document.body.addEventListener("django-sse:succeeded", (event) => {
  const result: JSONValue = event.detail.data.result;
  console.log(result);
});
window.addEventListener("django-sse:failed", (event) => console.log(event.detail.data.error));
document.addEventListener("django-sse:event", (event) => {
  const detail: JobEventDetail = event.detail;
  console.log(detail.job, detail.type, detail.data);
});
// A custom event type of the page (events="row_added" on the tag): its data is unknown.
document.addEventListener("django-sse:row_added", (event) => {
  const data: unknown = event.detail.data;
  console.log(data);
  // @ts-expect-error: a custom event's data must be checked before use
  console.log(event.detail.data.row);
});

const element = document.querySelector<HTMLElement>(`[data-django-sse-job="${JOB}"]`);
const connection = element?.dataset.djangoSseConnection as ConnectionState | undefined;
if (connection === "unavailable" || connection === "stopped") {
  console.warn("not live");
}

const types: readonly LifecycleType[] = LIFECYCLE_TYPES;
console.log(types.includes("progress"), TERMINAL_TYPES.length, DjangoSSE.TERMINAL_TYPES);

void follow(JOB);

// -- misuses the types reject -------------------------------------------------------------------

// @ts-expect-error: no such state
const paused: WatcherState = "paused";
// @ts-expect-error: "unavailable" is an element's connection state, not a watcher's
const unavailable: WatcherState = "unavailable";
// @ts-expect-error: the lists are read-only
LIFECYCLE_TYPES.push("started");
// @ts-expect-error: progress data is an object
watch("/sse/jobs/x/events/", { onProgress: (data: string) => console.log(data) });
// @ts-expect-error: a job stream's onEvent gets no job and no seq (that is kind: "session")
watch("/sse/jobs/x/events/", { onEvent: (t: string, d: unknown, i: string | null, job: string) => job });
// @ts-expect-error: the error of a failed job is a string
watch("/sse/jobs/x/events/", { onFailure: (error: number) => error });
// @ts-expect-error: no such option
watch("/sse/jobs/x/events/", { onMessage: () => undefined });
// @ts-expect-error: bind takes a DOM node
bind("#jobs");
console.log(paused, unavailable);
