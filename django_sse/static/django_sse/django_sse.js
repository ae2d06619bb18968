/*
 * django_sse.js: a small browser client for django_sse job streams.
 *
 *   const watcher = DjangoSSE.watch(url, {
 *     lastEventId: 12,           // resume after what the page already shows
 *     events: ["log"],           // custom event types to listen for
 *     onProgress(data) { ... },  // {current, total, message}
 *     onSuccess(result) { ... },
 *     onCancelRequested() { ... }, // somebody asked the job to stop; "cancelled" follows
 *     onStatus(state) { ... },   // "connecting" | "open" | "reconnecting" | "closed"
 *   });
 *   watcher.close();
 *
 * No dependencies, no build step: load it with a classic <script> tag.
 */
(function (root) {
  "use strict";

  const LIFECYCLE_TYPES = [
    "started",
    "progress",
    "cancel_requested",
    "succeeded",
    "failed",
    "cancelled",
  ];
  const TERMINAL_TYPES = new Set(["succeeded", "failed", "cancelled"]);

  // The server sends JSON, but a custom event from another publisher might not be: hand such
  // data over as the raw string rather than dropping the event.
  function parseData(text) {
    if (text === "") {
      return null;
    }
    try {
      return JSON.parse(text);
    } catch (error) {
      return text;
    }
  }

  // A callback that throws must not stop the others, nor leave the stream half-handled.
  function call(callback, ...args) {
    if (typeof callback !== "function") {
      return;
    }
    try {
      callback(...args);
    } catch (error) {
      // Rethrown outside of the event handler, so that it still shows in the console.
      setTimeout(() => {
        throw error;
      });
    }
  }

  // The first request cannot carry a Last-Event-ID header, so django_sse also reads the resume
  // point from this query parameter. Reconnections send the header, which the server prefers.
  function withResumePoint(url, lastEventId) {
    if (lastEventId === undefined || lastEventId === null || lastEventId === "") {
      return url;
    }
    const resolved = new URL(url, document.baseURI);
    resolved.searchParams.set("last_event_id", String(lastEventId));
    return resolved.href;
  }

  // A custom event may be named "open" or "error", like the connection's own events; only the
  // server's events carry data (a string, possibly empty).
  function isServerEvent(event) {
    return typeof event.data === "string";
  }

  function watch(url, options = {}) {
    if (typeof root.EventSource === "undefined") {
      throw new Error("DjangoSSE: this browser has no EventSource.");
    }
    let state = null;
    let closed = false;
    let lastEventId = options.lastEventId === undefined ? null : String(options.lastEventId);

    function setState(next) {
      if (next !== state) {
        state = next;
        call(options.onStatus, next);
      }
    }

    setState("connecting");
    const source = new root.EventSource(withResumePoint(url, options.lastEventId), {
      withCredentials: Boolean(options.withCredentials),
    });

    function close() {
      if (closed) {
        return;
      }
      closed = true;
      source.close();
      setState("closed");
    }

    function handle(type, event) {
      if (closed || !isServerEvent(event)) {
        return;
      }
      if (event.lastEventId) {
        lastEventId = event.lastEventId;
      }
      const data = parseData(event.data);
      // Close before the callbacks run: the server ends the stream after a terminal event, and
      // an open EventSource would reconnect (only to be told 204) a few seconds later.
      if (TERMINAL_TYPES.has(type)) {
        close();
      }
      call(options.onEvent, type, data, event.lastEventId || null);
      const payload = data !== null && typeof data === "object" ? data : {};
      switch (type) {
        case "started":
          call(options.onStart, data);
          break;
        case "progress":
          call(options.onProgress, data);
          break;
        case "succeeded":
          call(options.onSuccess, payload.result);
          break;
        case "failed":
          call(options.onFailure, payload.error);
          break;
        case "cancel_requested":
          // Not an end: the job stops when its task notices, with a "cancelled" event.
          call(options.onCancelRequested, data);
          break;
        case "cancelled":
          call(options.onCancel, data);
          break;
        default:
          break;
      }
    }

    const types = new Set([...LIFECYCLE_TYPES, "message", ...(options.events || [])]);
    for (const type of types) {
      source.addEventListener(type, (event) => handle(type, event));
    }

    source.addEventListener("open", (event) => {
      if (!closed && !isServerEvent(event)) {
        setState("open");
      }
    });

    source.addEventListener("error", (event) => {
      if (closed || isServerEvent(event)) {
        return;
      }
      // CLOSED means the browser gave up for good: the server answered 204 (nothing more to
      // send), 404 (no such job, or not yours) or something that is not an event stream.
      // Otherwise the connection dropped and the browser retries on its own, sending
      // Last-Event-ID so that the stream resumes without a gap.
      if (source.readyState === root.EventSource.CLOSED) {
        close();
      } else {
        setState("reconnecting");
      }
    });

    return {
      close,
      get state() {
        return state;
      },
      get lastEventId() {
        return lastEventId;
      },
    };
  }

  root.DjangoSSE = Object.freeze({
    watch,
    LIFECYCLE_TYPES: Object.freeze(LIFECYCLE_TYPES),
    TERMINAL_TYPES: Object.freeze([...TERMINAL_TYPES]),
  });
})(window);
