// django_sse.d.ts: the types of django_sse's browser client, the ES module django_sse.mjs (the
// classic script django_sse.js sets the same API as the global `DjangoSSE`).
//
// Written by hand from django_sse.js: change both together. tests/test_js.py has tsc check
// tests/js/types/example.ts (which uses all of it, and misuses it where marked) against this
// file, through package.json as a front-end build would.

/// <reference lib="dom" />

/** JSON as the server sends it, parsed. */
export type JSONValue = null | boolean | number | string | JSONValue[] | { [key: string]: JSONValue };

/** The events django_sse records for every job, in the order a job can go through them. */
export type LifecycleType =
  | "started"
  | "progress"
  | "cancel_requested"
  | "succeeded"
  | "failed"
  | "cancelled";

/** The events that end a job: nothing follows them. */
export type TerminalType = "succeeded" | "failed" | "cancelled";

/** A job's status (`data-django-sse-status`, the snapshot's `status`). */
export type JobStatus = "pending" | "running" | "succeeded" | "failed" | "cancelled";

/**
 * A connection's state, as `watch()`'s `onStatus` and `Watcher.state` say it:
 * - `"connecting"`: the first request is on its way;
 * - `"open"`: live;
 * - `"reconnecting"`: it dropped after it was live; the browser retries with `Last-Event-ID`;
 * - `"stalled"`: no answer 5 s after the first request (a WSGI server, a buffering proxy);
 *   `"open"` follows if the answer comes after all;
 * - `"closed"`: ended, for good (the job ended, `close()`, or the server refused the stream:
 *   `204`, `404`, or an answer that is not an event stream).
 */
export type WatcherState = "connecting" | "open" | "reconnecting" | "stalled" | "closed";

/**
 * What a bound element's `data-django-sse-connection` says (and its `connection` part shows).
 * Besides a watcher's states, on an element whose job still runs:
 * - `"unavailable"`: the server never answered with an event stream (refused, a login page, an
 *   error page);
 * - `"stopped"`: the server refused a reconnection after the page had been live.
 * An element whose job has ended is `"closed"`, whatever its connection does.
 */
export type ConnectionState = WatcherState | "unavailable" | "stopped";

/** The data of a `progress` event. `total` is null while unknown. */
export interface ProgressData {
  current: number;
  total: number | null;
  message: string;
}

/** The data of a `succeeded` event: what the task returned (JSON). */
export interface SucceededData {
  result: JSONValue;
}

/** The data of a `failed` event: the error meant for the user, as text. */
export interface FailedData {
  error: string;
}

/** The data of each lifecycle event, parsed. */
export interface LifecycleData {
  started: Record<string, unknown>;
  progress: ProgressData;
  cancel_requested: Record<string, unknown>;
  succeeded: SucceededData;
  failed: FailedData;
  cancelled: Record<string, unknown>;
}

/** Options of both kinds of `watch()`. */
interface WatchOptionsBase {
  /**
   * Resume after this event: the job's `last_seq` as the page rendered it (or the snapshot's),
   * or an all-jobs stream's resume point. Sent as `?last_event_id=`.
   */
  lastEventId?: number | string | null;
  /** Your own event types to listen for (an EventSource only hands over the types it listens for). */
  events?: readonly string[];
  /** One connection for all tabs of this session (the default), or `false`: one per tab. */
  share?: boolean;
  /** The session's sharing tag, for a page without `{% django_sse_assets %}`'s. */
  identity?: string;
  /** `true` for a stream of another origin (see the `CORS_ALLOWED_ORIGINS` setting). */
  withCredentials?: boolean;
  onStart?: (data: LifecycleData["started"]) => void;
  onProgress?: (data: ProgressData) => void;
  onSuccess?: (result: JSONValue) => void;
  onFailure?: (error: string) => void;
  /** Asked to stop: `onCancel` follows when the task stops (it may also succeed or fail). */
  onCancelRequested?: (data: LifecycleData["cancel_requested"]) => void;
  onCancel?: (data: LifecycleData["cancelled"]) => void;
  onStatus?: (state: WatcherState) => void;
}

/** `watch()` of one job's stream (`/sse/jobs/<uuid>/events/`): it closes itself at the job's end. */
export interface JobWatchOptions extends WatchOptionsBase {
  kind?: "job";
  /**
   * Every event, custom ones included: `data` is the parsed JSON (a string when it is not
   * JSON), `id` the event's id (the job's `seq`, as a string).
   */
  onEvent?: (type: string, data: unknown, id: string | null) => void;
}

/** `watch()` of the all-jobs stream (`/sse/events/`): it stays open until `close()`. */
export interface SessionWatchOptions extends WatchOptionsBase {
  kind: "session";
  /** Every event, with the job it is about and its `seq` in that job. */
  onEvent?: (
    type: string,
    data: unknown,
    id: string | null,
    job: string,
    seq: number | null
  ) => void;
}

export type WatchOptions = JobWatchOptions | SessionWatchOptions;

/** What `watch()` returns. */
export interface Watcher {
  /** Close the connection (or leave the tabs' shared one). Safe to call twice. */
  close(): void;
  readonly state: WatcherState;
  /** The last event's id: where a new watcher would resume. */
  readonly lastEventId: string | number | null;
}

/** One connection that `bind()` opened for some of the bound elements. */
export interface Feed {
  close(): void;
  readonly state: WatcherState;
  readonly lastEventId: string | number | null;
}

/** Follow a job's stream, or with `kind: "session"` the stream of all of the visitor's jobs. */
export function watch(url: string | URL, options: SessionWatchOptions): Watcher;
export function watch(url: string | URL, options?: JobWatchOptions): Watcher;

/**
 * Bind the `[data-django-sse-job]` elements in `scope` (and `scope` itself) that are not bound
 * yet. The module and the script bind the page once it is parsed: call this for elements
 * added later.
 */
export function bind(scope?: Document | Element): Feed[];

export const LIFECYCLE_TYPES: readonly LifecycleType[];
export const TERMINAL_TYPES: readonly TerminalType[];

/** The default export: the same API as the classic script's global `DjangoSSE`. */
declare const DjangoSSE: {
  readonly watch: typeof watch;
  readonly bind: typeof bind;
  readonly LIFECYCLE_TYPES: typeof LIFECYCLE_TYPES;
  readonly TERMINAL_TYPES: typeof TERMINAL_TYPES;
};
export default DjangoSSE;

/**
 * The `detail` of the DOM events dispatched on a bound element (bubbling): `django-sse:event`
 * for every event and `django-sse:<type>` for each type.
 */
export interface JobEventDetail<Type extends string = string, Data = unknown> {
  /** The job's UUID. */
  job: string;
  /** The event's number in its job. */
  seq: number;
  type: Type;
  /** The parsed JSON data (a string when it is not JSON). */
  data: Data;
}

/** A job's state as JSON, from `GET /sse/jobs/<uuid>/` (`django_sse:job-detail`). */
export interface JobSnapshot {
  id: string;
  name: string;
  status: JobStatus;
  current: number;
  total: number | null;
  /** 0 to 100, null while the total is unknown. */
  percent: number | null;
  message: string;
  cancel_requested: boolean;
  /** Open the stream with `lastEventId: last_seq` to get every later event once. */
  last_seq: number;
  /** ISO 8601, UTC. */
  created_at: string;
  updated_at: string;
  finished_at: string | null;
  /** Succeeded jobs only. */
  result?: JSONValue;
  /** Failed jobs only. */
  error?: string;
}

type LifecycleEventMap = {
  [Type in LifecycleType as `django-sse:${Type}`]: CustomEvent<
    JobEventDetail<Type, LifecycleData[Type]>
  >;
};

declare global {
  // Every element, the document and the window: the events bubble.
  interface GlobalEventHandlersEventMap extends LifecycleEventMap {
    "django-sse:event": CustomEvent<JobEventDetail>;
    /** Your own event types (`events="..."` on the tag, `data-django-sse-events`). */
    [type: `django-sse:${string}`]: CustomEvent<JobEventDetail>;
  }
}
