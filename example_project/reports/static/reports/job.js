/*
 * The job page: keeps the progress bar, the status line and the log up to date.
 *
 * The server rendered everything up to event data-last-event-id; the stream starts right after
 * it, so nothing is shown twice and nothing is missed. Event data only ever goes through
 * textContent.
 */
(function () {
  "use strict";

  const job = document.getElementById("job");
  if (!job || !window.DjangoSSE) {
    return;
  }
  const progress = document.getElementById("job-progress");
  const status = document.getElementById("job-status");
  const badge = document.getElementById("job-badge");
  const connection = document.getElementById("job-connection");
  const cancelForm = document.getElementById("job-cancel");
  const log = document.getElementById("job-log");
  const logEmpty = document.getElementById("job-log-empty");
  const error = document.getElementById("job-error");
  const result = document.getElementById("job-result");

  const STATUS_LABELS = {
    pending: "Pending",
    running: "Running",
    succeeded: "Succeeded",
    failed: "Failed",
    cancelled: "Cancelled",
  };
  const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
  const CONNECTION_LABELS = {
    connecting: "Connecting…",
    open: "Live",
    reconnecting: "Connection lost, reconnecting…",
    // No answer after a few seconds: a WSGI server, say (django_sse.js tells the console why).
    stalled: "Live updates are unavailable: the server does not answer.",
    closed: "Stream closed; reload the page to try again.",
  };

  function setJobStatus(name, text) {
    job.dataset.status = name;
    badge.className = "badge status-" + name;
    badge.textContent = STATUS_LABELS[name];
    status.textContent = text;
    if (FINISHED.has(name)) {
      if (cancelForm) {
        cancelForm.hidden = true;
      }
      connection.dataset.state = "closed";
      connection.textContent = "Finished";
    }
  }

  function showProgress({ current, total, message }) {
    let text = message || "Running";
    if (total) {
      progress.max = total;
      progress.value = current;
      text += ` (${current} of ${total}, ${Math.round((100 * current) / total)}%)`;
    }
    setJobStatus("running", text);
  }

  function appendLog(line) {
    const item = document.createElement("li");
    item.textContent = line;
    log.append(item);
    logEmpty.hidden = true;
  }

  function showResult(value) {
    const summary = document.getElementById("job-result-summary");
    if (value && typeof value === "object" && "rows" in value) {
      summary.textContent = `${value.rows} rows read in ${value.seconds} s.`;
    }
    document.getElementById("job-result-json").textContent = JSON.stringify(value, null, 2);
    result.hidden = false;
  }

  // A finished job has nothing more to stream (the server would answer 204).
  if (FINISHED.has(job.dataset.status)) {
    return;
  }

  const watcher = window.DjangoSSE.watch(job.dataset.streamUrl, {
    lastEventId: job.dataset.lastEventId,
    events: ["log"],
    onStart() {
      setJobStatus("running", "Running");
    },
    onProgress: showProgress,
    onEvent(type, data) {
      if (type === "log" && data && typeof data.line === "string") {
        appendLog(data.line);
      }
    },
    onSuccess(value) {
      if (progress.max) {
        progress.value = progress.max;
      }
      setJobStatus("succeeded", "Done.");
      showResult(value);
    },
    onFailure(message) {
      setJobStatus("failed", "Failed.");
      error.textContent = message || "The report failed.";
      error.hidden = false;
    },
    onCancelRequested() {
      status.textContent = "Stopping…";
      if (cancelForm) {
        cancelForm.querySelector("button").disabled = true;
      }
    },
    onCancel() {
      setJobStatus("cancelled", "Cancelled.");
    },
    onStatus(state) {
      if (FINISHED.has(job.dataset.status)) {
        return;
      }
      connection.dataset.state = state;
      connection.textContent = CONNECTION_LABELS[state];
    },
  });

  // A page restored from the back/forward cache shows old content over a closed stream:
  // load it afresh instead (the server renders the current state and the stream resumes).
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) {
      window.location.reload();
    }
  });
  window.addEventListener("pagehide", () => watcher.close());

  // Cancel through django_sse's endpoint (CSRF token from the form): the stream then shows
  // "cancel_requested" and, once the worker has stopped, "cancelled".
  if (cancelForm) {
    cancelForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = cancelForm.querySelector("button");
      button.disabled = true;
      try {
        const response = await fetch(cancelForm.dataset.cancelUrl, {
          method: "POST",
          credentials: "same-origin",
          headers: {
            "X-CSRFToken": cancelForm.querySelector("[name=csrfmiddlewaretoken]").value,
            Accept: "application/json",
          },
        });
        if (response.status !== 202 && response.status !== 409) {
          throw new Error(`HTTP ${response.status}`);
        }
      } catch (failure) {
        button.disabled = false;
        error.textContent = "The report could not be cancelled; try again.";
        error.hidden = false;
      }
    });
  }
})();
