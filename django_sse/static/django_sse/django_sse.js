/*
 * django_sse.js: the browser client of django_sse. No dependencies, no build step: load it with
 * a classic <script> tag (the {% django_sse_assets %} template tag writes it for you); it sets
 * the global DjangoSSE. The same code is an ES module, typed by django_sse.d.ts:
 * import { watch, bind } from ".../django_sse.mjs". scripts/build_client_module.py writes
 * django_sse.mjs from this file: edit this one, then run the script.
 *
 * 1. By HTML attributes alone (what {% django_sse_progress job %} renders):
 *
 *      <div data-django-sse-job="<uuid>" data-django-sse-seq="4" data-django-sse-status="running"
 *           data-django-sse-url="/sse/events/">
 *        <div data-django-sse-bind="progress" role="progressbar" ...></div>
 *        <p data-django-sse-bind="message"></p>
 *        <ol data-django-sse-bind="log"></ol>
 *      </div>
 *
 *    Every such element on the page is kept up to date through ONE connection (the stream of all
 *    of the visitor's jobs, narrowed to the jobs on the page), and every tab of the same page
 *    shares that connection. Each event is also dispatched on the element as a DOM event
 *    ("django-sse:event" and "django-sse:<type>", detail {job, seq, type, data}).
 *
 * 2. From code:
 *
 *      const watcher = DjangoSSE.watch(url, {
 *        lastEventId: 12,             // resume after what the page already shows
 *        events: ["log"],             // custom event types to listen for
 *        share: true,                 // one connection for all tabs (the default)
 *        onEvent(type, data, id) {}, onStart(data) {}, onProgress(data) {},
 *        onSuccess(result) {}, onFailure(error) {}, onCancelRequested(data) {}, onCancel(data) {},
 *        onStatus(state) {},          // "connecting" | "open" | "reconnecting" | "stalled"
 *                                     // (no answer yet, see OPEN_TIMEOUT_MS) | "closed"
 *      });
 *      watcher.close();
 *
 * Sharing: one tab (the leader, chosen with the Web Locks API) holds the EventSource and
 * forwards each event to the other tabs over a BroadcastChannel. A tab that joins is sent what
 * it has not seen yet from the leader's memory; when that cannot be proven gapless, the tab
 * opens a connection of its own. When the leader closes, another tab takes over and resumes
 * where it was. Browsers without those APIs get one connection per tab.
 *
 * Not live: a stream that has not answered after OPEN_TIMEOUT_MS (a WSGI server holds a
 * streaming response back until it ends), a first answer that is not an event stream (a login
 * page, an error page, a 404) and a stylesheet that did not load are said on the bar and, with
 * what to check, in the console. The tag renders a "script did not load" text that bind()
 * replaces, for the case where this file itself is missing.
 */
(function (root) {
  "use strict";

  // <module-body>: from here to </module-body>, this is also the body of django_sse.mjs, the ES
  // module (scripts/build_client_module.py writes it). It refers to the global object as
  // `root`, declares its API as `DjangoSSE` and touches no page until start() is called.
  //
  // Its parts, in order: constants and helpers; the tab protocol's MESSAGE types and ROLEs;
  // Ledger (what a feed has passed on, its resume point, the catch-up of a joining tab);
  // Connection (openConnection: this tab's EventSource); TabShare (shareWithTabs: leader
  // election and relay between tabs); Feed (openFeed: those three together); watch(); Binding
  // (bind() and the DOM); the API object and start().

  // == Constants and helpers ======================================================================
  const LIFECYCLE_TYPES = Object.freeze([
    "started",
    "progress",
    "cancel_requested",
    "succeeded",
    "failed",
    "cancelled",
  ]);
  const TERMINAL_TYPE_LIST = Object.freeze(["succeeded", "failed", "cancelled"]);
  const TERMINAL_TYPES = new Set(TERMINAL_TYPE_LIST);
  const ACTIVE_STATUSES = new Set(["pending", "running"]);
  // How many events a tab keeps to catch up a tab that joins, and how long a joining tab
  // waits for the leader's answer before it opens a connection of its own.
  const BUFFER_EVENTS = 5000;
  const SYNC_TIMEOUT_MS = 3000;
  const TAKEOVER_DELAY_MS = 100;
  // A stream that sends no response headers for this long is not live: a WSGI server (runserver
  // without daphne, gunicorn's sync workers) collects a streaming response before sending it.
  const OPEN_TIMEOUT_MS = 5000;

  // What the console says when the stream is not live: for the developer, in English.
  const ASGI_HINT =
    "run an ASGI server: put 'daphne' first in INSTALLED_APPS (before " +
    "django.contrib.staticfiles) with ASGI_APPLICATION set, or serve with daphne or uvicorn";
  const STALLED_HINT =
    "A WSGI server (manage.py runserver without daphne, gunicorn's sync workers) holds a " +
    "streaming response back until it ends: " +
    ASGI_HINT +
    ". Behind a proxy, check that it does not buffer the response (nginx: X-Accel-Buffering).";
  const REFUSED_HINT =
    "Look at that request in the Network tab: a 404 or a 204 means the server will not stream " +
    "these jobs to this visitor (logged out? another session?); a redirect or an HTML page " +
    "means a login page or an error page answered (is the URL behind a login-required " +
    "middleware? does the server log an error?). Under a WSGI server, " +
    ASGI_HINT +
    ".";

  // The server sends JSON, but a custom event from another publisher might not be: hand such
  // data over as the raw string rather than dropping the event.
  function parseData(text) {
    if (text === "" || text === undefined || text === null) {
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

  function absolute(url) {
    return new URL(url, document.baseURI);
  }

  // The first request cannot carry a Last-Event-ID header, so django_sse also reads the resume
  // point from this query parameter. Reconnections send the header, which the server prefers.
  function withResumePoint(url, lastEventId) {
    const resolved = absolute(url);
    resolved.searchParams.delete("last_event_id");
    if (lastEventId !== undefined && lastEventId !== null && lastEventId !== "") {
      resolved.searchParams.set("last_event_id", String(lastEventId));
    }
    return resolved.href;
  }

  // A custom event may be named "open" or "error", like the connection's own events; only the
  // server's events carry data (a string, possibly empty).
  function isServerEvent(event) {
    return typeof event.data === "string";
  }

  // The resume point of the all-jobs stream (see django_sse/resume.py):
  // <horizon>.<first 8 hex digits of a job><its seq>..., numbers in base 36.
  function jobRef(job) {
    return job.replace(/-/g, "").slice(0, 8);
  }

  function sessionResumePoint(horizon, refs) {
    const entries = Object.keys(refs)
      .sort()
      .map((ref) => ref + Math.max(0, Math.floor(refs[ref])).toString(36));
    return [Math.max(0, Math.floor(horizon)).toString(36), ...entries].join(".");
  }

  // The session's sharing tag, from <meta name="django-sse-identity"> ({% django_sse_assets %}).
  function pageIdentity() {
    const meta = document.querySelector('meta[name="django-sse-identity"]');
    return meta ? meta.getAttribute("content") || "" : "";
  }

  // A resume point of the all-jobs stream, decoded: {horizon, refs: {ref: seq}}, or null.
  function parseSessionResumePoint(id) {
    if (!id || !/^[0-9a-z]{1,13}(\.[0-9a-f]{8}[0-9a-z]{1,13})*$/.test(id)) {
      return null;
    }
    const [head, ...entries] = id.split(".");
    const refs = {};
    for (const entry of entries) {
      refs[entry.slice(0, 8)] = parseInt(entry.slice(8), 36);
    }
    return { horizon: parseInt(head, 36), refs };
  }

  function randomId() {
    return Math.random().toString(36).slice(2) + Date.now().toString(36);
  }

  // == The tab protocol's messages ================================================================
  // Tabs that share a feed talk over a BroadcastChannel named after the feed's key, in messages
  // {t: <one of these>, ...}. The strings are the wire format between tabs, which may run
  // different copies of this file (a tab opened before a deploy): keep them as they are.
  const MESSAGE = Object.freeze({
    HELLO: "hello", // joining tab -> leader: {from, have: {job: seq}}, what that tab has seen
    SYNC: "sync", // leader -> the joining tab: {to, ok, msgs, state}; ok false: no gapless proof
    EVENT: "msg", // leader -> every tab: {msg}, one message as the leader passed it on
    STATE: "state", // leader -> every tab: {state}, its connection's state
    LEADER: "leader", // a new leader -> every tab: {from}; the others join it again
    END: "end", // leader (or a tab on its own) -> every tab: {opened}; the server ended it
  });

  // What a tab is to a shared feed: "joining" until it knows, then the one that holds the
  // connection, one fed by it, or one with a connection of its own (no leader could catch it up).
  const ROLE = Object.freeze({
    JOINING: "joining",
    LEADER: "leader",
    FOLLOWER: "follower",
    ALONE: "alone",
  });

  // == Ledger: what a feed has passed on ==========================================================
  /*
   * Each message is {type, id, raw, job, seq}; `job` is "" on a one-job stream and the job's
   * UUID on the all-jobs stream, `seq` the event's number in its job. The ledger lets each
   * (job, seq) through once, in order; keeps the last BUFFER_EVENTS messages, from which a
   * joining tab is caught up; and knows the point to resume from.
   */
  class Ledger {
    constructor(session, { positions = {}, lastEventId, horizon } = {}) {
      this.session = session;
      this.positions = Object.assign({}, positions); // job -> the last seq passed on
      // job -> the seq just before the oldest one in the buffer: what this tab can catch up
      // from. At first, what it knew before its first event.
      this.base = Object.assign({}, positions);
      this.buffer = [];
      this.lastId = lastEventId === undefined ? null : lastEventId;
      this.horizon = horizon || 0;
    }

    // Records a message; false for an older or repeated (job, seq), which is to be dropped.
    record(message) {
      if (message.seq !== null) {
        const known = this.positions[message.job];
        if (known !== undefined && message.seq <= known) {
          return false;
        }
        if (!(message.job in this.base)) {
          this.base[message.job] = message.seq - 1;
        }
        this.positions[message.job] = message.seq;
      }
      if (message.id) {
        this.lastId = message.id;
        if (this.session) {
          const point = parseSessionResumePoint(message.id);
          this.horizon = point ? Math.max(this.horizon, point.horizon) : this.horizon;
        }
      }
      this.buffer.push(message);
      if (this.buffer.length > BUFFER_EVENTS) {
        const dropped = this.buffer.shift();
        if (dropped.seq !== null) {
          this.base[dropped.job] = Math.max(this.base[dropped.job] || 0, dropped.seq);
        }
      }
      return true;
    }

    // Where a connection of this tab starts: null for a first connection.
    resumeId() {
      if (this.session) {
        // What the server last said (every job it followed) merged with what this tab has
        // seen, so that a tab taking over resumes every job where it is.
        const point = parseSessionResumePoint(this.lastId);
        const refs = Object.assign({}, point ? point.refs : {});
        for (const job of Object.keys(this.positions)) {
          const ref = jobRef(job);
          refs[ref] = Math.max(refs[ref] ?? 0, this.positions[job]);
        }
        if (!point && Object.keys(refs).length === 0) {
          return null; // a first connection
        }
        return sessionResumePoint(Math.max(this.horizon, point ? point.horizon : 0), refs);
      }
      if (this.positions[""] !== undefined) {
        return String(this.positions[""]);
      }
      return this.lastId;
    }

    // What a tab that has seen up to `have` ({job: seq}) is missing, in order, or null when
    // this ledger cannot prove it gapless.
    catchUp(have) {
      for (const job of Object.keys(have)) {
        if (!(job in this.base)) {
          return null; // a job this tab knows nothing about
        }
      }
      for (const job of Object.keys(this.base)) {
        if ((have[job] === undefined ? 0 : have[job]) < this.base[job]) {
          return null; // the other tab is further behind than this tab's memory goes
        }
      }
      // A new session follower is like a first connection: jobs that ended before it came
      // are not sent (their pages were rendered finished).
      const ended = new Set(
        this.buffer.filter((message) => TERMINAL_TYPES.has(message.type)).map((m) => m.job)
      );
      return this.buffer.filter(
        (message) =>
          message.seq !== null &&
          message.seq > (have[message.job] || 0) &&
          !(this.session && !(message.job in have) && ended.has(message.job))
      );
    }
  }

  // A server event as a ledger message.
  function messageFrom(session, type, event) {
    let job = "";
    let seq = null;
    let raw = event.data;
    if (session) {
      const envelope = parseData(event.data);
      if (envelope && typeof envelope === "object" && "job" in envelope) {
        job = String(envelope.job);
        seq = Number(envelope.seq);
        raw = JSON.stringify(envelope.data === undefined ? null : envelope.data);
      }
    } else if (/^\d+$/.test(event.lastEventId || "")) {
      seq = Number(event.lastEventId);
    }
    return { type, id: event.lastEventId || null, raw, job, seq };
  }

  // == Connection: this tab's own EventSource =====================================================
  /*
   * One EventSource on `target`, listening for `options.types`. The browser retries a dropped
   * connection on its own, sending Last-Event-ID so that the stream resumes without a gap; this
   * only reports what happens, to `on`: message(type, event), open(), drop() (the browser
   * retries), refuse() (it gave up for good) and, with options.watchOpening, silence() when
   * nothing answered within OPEN_TIMEOUT_MS. The feed decides what each means.
   */
  function openConnection(target, options, on) {
    const connection = {
      source: new root.EventSource(target, { withCredentials: Boolean(options.withCredentials) }),
      openTimer: null,
      closed: false,
    };
    const { source } = connection;
    if (options.watchOpening) {
      // An error or an open clears it: still waiting for the first answer when it fires.
      connection.openTimer = setTimeout(() => {
        if (!connection.closed) {
          on.silence();
        }
      }, OPEN_TIMEOUT_MS);
    }
    for (const type of options.types) {
      source.addEventListener(type, (event) => {
        if (!connection.closed && isServerEvent(event)) {
          on.message(type, event);
        }
      });
    }
    source.addEventListener("open", (event) => {
      if (!connection.closed && !isServerEvent(event)) {
        clearTimeout(connection.openTimer);
        on.open();
      }
    });
    source.addEventListener("error", (event) => {
      if (connection.closed || isServerEvent(event)) {
        return;
      }
      // CLOSED means the browser gave up for good: the server answered 204 (nothing more to
      // send), 404 (no such job, or not yours) or something that is not an event stream.
      clearTimeout(connection.openTimer);
      if (source.readyState === root.EventSource.CLOSED) {
        on.refuse();
      } else {
        on.drop();
      }
    });
    return {
      close() {
        connection.closed = true;
        clearTimeout(connection.openTimer);
        source.close();
      },
    };
  }

  // == TabShare: one connection for every tab of a feed ===========================================
  /*
   * The tab that gets the Web Lock named after the feed's key leads: it holds the connection and
   * relays each message to the other tabs over a BroadcastChannel of that name. A tab that
   * joins says what it has seen (HELLO) and is sent the rest from the leader's ledger (SYNC);
   * when that cannot be proven gapless, or nobody answers within SYNC_TIMEOUT_MS, it opens a
   * connection of its own. When the leader's tab goes away its lock is released: the next tab
   * in the lock's queue leads, from its own ledger, and the others join it again.
   *
   * `feed` is what the tab protocol needs of the feed: its state, closed, catchUp(have),
   * have(), deliver(message), showLeaderState(state), connect() and close(info).
   */
  function shareWithTabs(name, feed) {
    const tab = {
      me: randomId(),
      role: ROLE.JOINING,
      syncing: false, // asked to join, not answered yet: relayed messages wait for the answer
      syncTimer: null,
      channel: new root.BroadcastChannel(name),
      releaseLock: null,
      lockAbort: typeof AbortController === "function" ? new AbortController() : null,
    };

    function post(message) {
      if (tab.channel) {
        try {
          tab.channel.postMessage(message);
        } catch (error) {
          // A closed channel (the page is going away): nothing to tell.
        }
      }
    }

    // What only the leader tells the other tabs.
    function relay(message) {
      if (tab.role === ROLE.LEADER) {
        post(message);
      }
    }

    function onMessage(event) {
      const message = event.data || {};
      if (feed.closed) {
        return;
      }
      if (tab.role === ROLE.LEADER) {
        if (message.t === MESSAGE.HELLO && message.from !== tab.me) {
          const missing = feed.catchUp(message.have || {});
          post({
            t: MESSAGE.SYNC,
            to: message.from,
            ok: missing !== null,
            msgs: missing || [],
            state: feed.state,
          });
        }
        return;
      }
      if (tab.role !== ROLE.FOLLOWER) {
        return;
      }
      switch (message.t) {
        case MESSAGE.SYNC:
          if (message.to === tab.me && tab.syncing) {
            clearTimeout(tab.syncTimer);
            if (!message.ok) {
              goAlone();
              return;
            }
            tab.syncing = false;
            for (const missed of message.msgs) {
              feed.deliver(missed);
            }
            feed.showLeaderState(message.state || "open");
          }
          break;
        case MESSAGE.EVENT:
          if (!tab.syncing) {
            feed.deliver(message.msg);
          }
          break;
        case MESSAGE.STATE:
          if (!tab.syncing && message.state !== "closed") {
            feed.showLeaderState(message.state);
          }
          break;
        case MESSAGE.LEADER:
          // The tab that held the connection went away and another took over.
          askToJoin();
          break;
        case MESSAGE.END:
          if (!tab.syncing) {
            feed.close({ opened: message.opened !== false });
          }
          break;
        default:
          break;
      }
    }

    function askToJoin() {
      tab.syncing = true;
      clearTimeout(tab.syncTimer);
      tab.syncTimer = setTimeout(goAlone, SYNC_TIMEOUT_MS);
      post({ t: MESSAGE.HELLO, from: tab.me, have: feed.have() });
    }

    // No leader could catch this tab up: it gets a connection of its own.
    function goAlone() {
      clearTimeout(tab.syncTimer);
      if (feed.closed || tab.role === ROLE.ALONE || tab.role === ROLE.LEADER) {
        return;
      }
      tab.role = ROLE.ALONE;
      tab.syncing = false;
      if (tab.lockAbort) {
        tab.lockAbort.abort();
      }
      feed.connect();
    }

    // Granted the lock: lead until the feed closes (or the tab goes away), which releases it.
    function lead() {
      const takeover = tab.role === ROLE.FOLLOWER;
      return new Promise((resolve) => {
        tab.releaseLock = resolve;
        const start = () => {
          if (feed.closed || tab.role === ROLE.ALONE) {
            resolve();
            return;
          }
          clearTimeout(tab.syncTimer);
          tab.role = ROLE.LEADER;
          tab.syncing = false;
          post({ t: MESSAGE.LEADER, from: tab.me });
          feed.connect();
        };
        if (takeover) {
          // The lock can be granted before the last messages of the tab that held it are
          // read: its final event may be among them, and then there is nothing to take over.
          setTimeout(start, TAKEOVER_DELAY_MS);
        } else {
          start();
        }
      });
    }

    tab.channel.addEventListener("message", onMessage);
    root.navigator.locks
      .request(name, { ifAvailable: true }, (lock) => {
        if (lock) {
          return lead();
        }
        tab.role = ROLE.FOLLOWER;
        askToJoin();
        // Take over when the leader goes away.
        const wait = tab.lockAbort ? { signal: tab.lockAbort.signal } : {};
        root.navigator.locks.request(name, wait, lead).catch(() => {});
        return undefined;
      })
      .catch(() => {
        if (tab.role !== ROLE.LEADER) {
          goAlone();
        }
      });

    return {
      post,
      relay,
      get role() {
        return tab.role;
      },
      close() {
        clearTimeout(tab.syncTimer);
        if (tab.lockAbort) {
          tab.lockAbort.abort();
        }
        if (tab.releaseLock) {
          tab.releaseLock();
        }
        if (tab.channel) {
          tab.channel.close();
          tab.channel = null;
        }
      },
    };
  }

  // == Feed: a Ledger fed by a Connection or by a TabShare ========================================
  /*
   * The events of one stream URL, from a connection of this tab or shared by another tab. A
   * feed passes each (job, seq) on once, in order, to sink.message; sink.status gets the
   * connection state (and, once "closed", {opened}: did the server ever answer with a stream).
   */
  function openFeed(url, options, sink) {
    const session = options.kind === "session";
    const types = new Set([...LIFECYCLE_TYPES, "message", ...(options.types || [])]);
    // Tabs share a connection only if they listen for the same event types: EventSource
    // hands over only the types it has listeners for.
    // ... and only tabs of the same session: the identity is a server-made HMAC of the session
    // (see {% django_sse_assets %}), so a tab rendered for another login never joins.
    const identity = options.identity ?? pageIdentity();
    const key = [identity, absolute(withResumePoint(url, null)).href, [...types].sort()].join(" ");
    const ledger = new Ledger(session, options);
    const feed = {
      state: null,
      closed: false,
      opened: false, // did this tab's connection (or the leader's) ever open?
      connection: null,
      tabs: null, // the TabShare, when sharing
    };

    function setState(next) {
      if (next !== feed.state) {
        feed.state = next;
        call(sink.status, next);
        if (feed.tabs) {
          feed.tabs.relay({ t: MESSAGE.STATE, state: next });
        }
      }
    }

    function deliver(message) {
      if (feed.closed || !ledger.record(message)) {
        return;
      }
      if (feed.tabs) {
        feed.tabs.relay({ t: MESSAGE.EVENT, msg: message });
      }
      sink.message(message);
    }

    function connect() {
      const first = feed.state === null || feed.state === "connecting" || feed.state === "stalled";
      setState(first ? "connecting" : "reconnecting");
      const target = withResumePoint(url, ledger.resumeId());
      feed.connection = openConnection(
        target,
        { types, withCredentials: options.withCredentials, watchOpening: !feed.opened },
        {
          message(type, event) {
            deliver(messageFrom(session, type, event));
          },
          open() {
            feed.opened = true;
            setState("open");
          },
          silence() {
            if (!feed.closed && !feed.opened && feed.state === "connecting") {
              console.warn(
                `DjangoSSE: no answer from ${target} after ${OPEN_TIMEOUT_MS / 1000} s. ` +
                  STALLED_HINT
              );
              setState("stalled");
            }
          },
          drop() {
            setState("reconnecting");
          },
          refuse() {
            if (!feed.opened) {
              console.error(
                `DjangoSSE: ${target} did not answer with an event stream (status 200, ` +
                  "Content-Type text/event-stream), so the browser gave up. " +
                  REFUSED_HINT
              );
            }
            if (feed.tabs) {
              // Only the leader's refusal is the other tabs' too: a tab streaming alone (behind
              // the leader's memory) that is refused (429) must not end the leader's followers.
              feed.tabs.relay({ t: MESSAGE.END, opened: feed.opened });
            }
            close({ opened: feed.opened });
          },
        }
      );
    }

    function canShare() {
      return (
        options.share !== false &&
        Boolean(identity) &&
        typeof root.BroadcastChannel === "function" &&
        root.navigator &&
        root.navigator.locks &&
        typeof root.navigator.locks.request === "function"
      );
    }

    // `info.opened`: false when the server never answered with an event stream.
    function close(info = { opened: true }) {
      if (feed.closed) {
        return;
      }
      feed.closed = true;
      if (feed.connection) {
        feed.connection.close();
      }
      if (feed.tabs) {
        feed.tabs.close();
      }
      feed.state = null;
      call(sink.status, "closed", info);
    }

    if (canShare()) {
      setState("connecting");
      feed.tabs = shareWithTabs("django_sse " + key, {
        get closed() {
          return feed.closed;
        },
        get state() {
          return feed.state;
        },
        catchUp: (have) => ledger.catchUp(have),
        have: () => Object.assign({}, ledger.positions),
        deliver,
        showLeaderState(state) {
          feed.opened = feed.opened || state === "open";
          setState(state);
        },
        connect,
        close,
      });
    } else {
      connect();
    }

    return {
      close: () => close(),
      get state() {
        return feed.closed ? "closed" : feed.state;
      },
      get lastEventId() {
        return ledger.lastId;
      },
      get shared() {
        return feed.tabs ? feed.tabs.role : ROLE.ALONE;
      },
    };
  }

  // == watch(): one stream, with callbacks ========================================================
  function watch(url, options = {}) {
    if (typeof root.EventSource === "undefined") {
      throw new Error("DjangoSSE: this browser has no EventSource.");
    }
    const session = options.kind === "session";
    const positions = {};
    if (!session && /^\d+$/.test(String(options.lastEventId ?? ""))) {
      positions[""] = Number(options.lastEventId);
    }
    let state = null;
    let feed = null;

    function handle(message) {
      const data = parseData(message.raw);
      // Close before the callbacks run: the server ends the stream after a terminal event, and
      // an open EventSource would reconnect (only to be told 204) a few seconds later.
      if (!session && TERMINAL_TYPES.has(message.type)) {
        feed.close();
      }
      const payload = data !== null && typeof data === "object" ? data : {};
      if (session) {
        call(options.onEvent, message.type, data, message.id, message.job, message.seq);
      } else {
        call(options.onEvent, message.type, data, message.id);
      }
      switch (message.type) {
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

    feed = openFeed(
      url,
      {
        kind: session ? "session" : "job",
        positions,
        lastEventId: options.lastEventId,
        types: options.events,
        share: options.share,
        identity: options.identity,
        withCredentials: options.withCredentials,
      },
      {
        message: handle,
        status(next) {
          if (next !== state) {
            state = next;
            call(options.onStatus, next);
          }
        },
      }
    );
    return {
      close: () => feed.close(),
      get state() {
        return state;
      },
      get lastEventId() {
        return feed.lastEventId;
      },
    };
  }

  // == Binding: the page's elements ===============================================================
  /*
   * bind(): elements with data-django-sse-job, kept up to date through one feed per stream URL:
   * their labels, parts (progress bar, status, message, log...), data attributes, connection
   * text and Cancel buttons.
   */
  const DEFAULT_LABELS = {
    pending: "Pending",
    running: "Running",
    succeeded: "Succeeded",
    failed: "Failed",
    cancelled: "Cancelled",
    cancel_requested: "Stopping…",
    // What the message part says once the job has ended.
    done: "Done",
    failed_error: "Failed: {error}",
    connecting: "",
    open: "",
    reconnecting: "Reconnecting…",
    closed: "",
    stopped: "Live updates stopped. Reload the page to see the latest.",
    stalled: "Live updates are unavailable: the server does not answer.",
    unavailable: "Live updates are unavailable: the server did not send them.",
    stylesheet_missing: "The progress bar cannot be drawn: its stylesheet did not load.",
    progress: "{current} of {total} ({percent}%)",
    cancel_failed: "The job could not be cancelled.",
  };

  // Parsed once per element, not once per event.
  const labelCache = new WeakMap();

  function labelsOf(element) {
    if (labelCache.has(element)) {
      return labelCache.get(element);
    }
    const labels = Object.assign({}, DEFAULT_LABELS);
    labelCache.set(element, labels);
    const own = element.getAttribute("data-django-sse-labels");
    if (own) {
      try {
        Object.assign(labels, JSON.parse(own));
      } catch (error) {
        // Malformed labels: the English defaults still say it.
      }
    }
    return labels;
  }

  function parts(element, name) {
    // The element's own parts, not those of a job element nested inside it.
    return [...element.querySelectorAll(`[data-django-sse-bind="${name}"]`)].filter(
      (part) => part.closest("[data-django-sse-job]") === element
    );
  }

  function setText(element, name, text) {
    for (const part of parts(element, name)) {
      part.textContent = text;
      part.hidden = text === "";
    }
  }

  function format(template, values) {
    return template.replace(/\{(\w+)\}/g, (match, name) =>
      values[name] === undefined ? match : String(values[name])
    );
  }

  function showProgress(element, labels, current, total) {
    const percent = total ? Math.max(0, Math.min(100, Math.round((100 * current) / total))) : null;
    for (const bar of parts(element, "progress")) {
      if (bar instanceof root.HTMLProgressElement) {
        if (total) {
          bar.max = total;
          bar.value = current;
        } else {
          bar.removeAttribute("value");
        }
        continue;
      }
      if (total) {
        bar.setAttribute("aria-valuemax", String(total));
        bar.setAttribute("aria-valuenow", String(current));
        bar.setAttribute("aria-valuetext", format(labels.progress, { current, total, percent }));
        bar.style.setProperty("--django-sse-percent", percent + "%");
      } else {
        // Indeterminate: no value at all, as ARIA asks.
        bar.removeAttribute("aria-valuenow");
        bar.removeAttribute("aria-valuetext");
      }
    }
    setText(element, "percent", percent === null ? "" : percent + "%");
  }

  function setStatus(element, labels, status) {
    element.setAttribute("data-django-sse-status", status);
    setText(element, "status", labels[status] || status);
    if (!ACTIVE_STATUSES.has(status)) {
      element.removeAttribute("data-django-sse-cancel-requested");
      for (const button of parts(element, "cancel")) {
        button.hidden = true;
      }
    }
  }

  function apply(element, labels, type, data) {
    const payload = data !== null && typeof data === "object" ? data : {};
    switch (type) {
      case "started":
        setStatus(element, labels, "running");
        break;
      case "progress":
        setStatus(element, labels, "running");
        showProgress(element, labels, Number(payload.current) || 0, Number(payload.total) || 0);
        if (!element.hasAttribute("data-django-sse-cancel-requested")) {
          setText(element, "message", payload.message ? String(payload.message) : "");
        }
        break;
      case "cancel_requested":
        // "Stopping…" only while the job still runs: the task may also end otherwise.
        if (isActive(element)) {
          element.setAttribute("data-django-sse-cancel-requested", "");
          setText(element, "message", labels.cancel_requested);
        }
        break;
      case "succeeded": {
        const bar = parts(element, "progress")[0];
        const total = Number(bar?.getAttribute("aria-valuemax") ?? bar?.max);
        if (total) {
          showProgress(element, labels, total, total);
        }
        setStatus(element, labels, "succeeded");
        setText(element, "message", labels.done);
        for (const part of parts(element, "result")) {
          part.textContent = JSON.stringify(payload.result ?? null, null, 2);
          part.hidden = false;
        }
        break;
      }
      case "failed": {
        const error = payload.error ? String(payload.error) : "";
        setStatus(element, labels, "failed");
        setText(element, "message", error ? format(labels.failed_error, { error }) : labels.failed);
        // Markup without a message part shows the error in its error part.
        if (parts(element, "message").length === 0) {
          setText(element, "error", error);
        }
        break;
      }
      case "cancelled":
        setStatus(element, labels, "cancelled");
        setText(element, "message", labels.cancelled);
        break;
      default:
        break;
    }
    const logs = parts(element, type === "log" ? "log" : `log-${type}`);
    if (logs.length) {
      const line =
        typeof data === "string" ? data : (payload.line ?? payload.message ?? JSON.stringify(data));
      for (const log of logs) {
        const item = document.createElement("li");
        item.textContent = String(line);
        log.append(item);
        log.hidden = false;
      }
      setText(element, "log-empty", "");
    }
  }

  // -- Binding: the connection text and the stylesheet check --------------------------------------

  // The connection part: the connection's state when it is worth a word, else the missing
  // stylesheet if it is.
  function setConnection(element, labels, connection) {
    element.setAttribute("data-django-sse-connection", connection);
    const text = labels[connection] ?? "";
    const assets = stylesheetMissing ? labels.stylesheet_missing : "";
    setText(element, "connection", text || assets);
  }

  /*
   * The stylesheet {% django_sse_assets %} links (<link data-django-sse-stylesheet>) sets
   * --django-sse-stylesheet on the root element. Once the page has loaded, a linked stylesheet
   * whose property is not there did not load: a 404, when the static files are not served.
   * Pages that link no such stylesheet (styles of their own) are not checked.
   */
  let stylesheetMissing = false;

  function checkStylesheet() {
    const link = document.querySelector("link[data-django-sse-stylesheet]");
    if (!link || typeof root.getComputedStyle !== "function") {
      return;
    }
    const check = () => {
      const style = root.getComputedStyle(document.documentElement);
      if (stylesheetMissing || style.getPropertyValue("--django-sse-stylesheet").trim() !== "") {
        return;
      }
      stylesheetMissing = true;
      console.error(
        `DjangoSSE: the stylesheet ${link.href} did not load, so the progress bars cannot be ` +
          "drawn. Serve the static files: runserver does with DEBUG=True; otherwise run " +
          "collectstatic and serve STATIC_ROOT (WhiteNoise, or your web server), or wrap the " +
          "ASGI application in ASGIStaticFilesHandler while DEBUG is on."
      );
      for (const element of document.querySelectorAll("[data-django-sse-bound]")) {
        const connection = element.getAttribute("data-django-sse-connection") || "connecting";
        setConnection(element, labelsOf(element), connection);
      }
    };
    if (document.readyState === "complete") {
      check();
    } else {
      root.addEventListener("load", check, { once: true });
    }
  }

  // -- Binding: Cancel buttons --------------------------------------------------------------------

  function csrfToken() {
    const field = document.querySelector("input[name=csrfmiddlewaretoken]");
    if (field) {
      return field.value;
    }
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  // The cancel request carries the CSRF token, so it only ever goes to the page's own origin,
  // whatever the attribute says. The URL resolved against the page, or null.
  function sameOriginUrl(url, page = root.location) {
    let resolved;
    try {
      resolved = new URL(url, page.href);
    } catch (error) {
      return null;
    }
    return resolved.origin === page.origin ? resolved.href : null;
  }

  function wireCancel(element, labels) {
    for (const button of parts(element, "cancel")) {
      const url = button.getAttribute("data-django-sse-cancel-url");
      if (!url || button.hasAttribute("data-django-sse-wired")) {
        continue;
      }
      button.setAttribute("data-django-sse-wired", "");
      button.addEventListener("click", async (event) => {
        event.preventDefault();
        const target = sameOriginUrl(url);
        if (target === null) {
          console.error(
            "DjangoSSE: not sent, data-django-sse-cancel-url is not of this page's origin:",
            button
          );
          setText(element, "error", labels.cancel_failed);
          return;
        }
        button.disabled = true;
        try {
          const response = await fetch(target, {
            method: "POST",
            credentials: "same-origin",
            headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
          });
          // 202: asked; 409: it had ended already. The stream tells the rest either way.
          if (response.status !== 202 && response.status !== 409) {
            throw new Error(`HTTP ${response.status}`);
          }
        } catch (error) {
          button.disabled = false;
          setText(element, "error", labels.cancel_failed);
        }
      });
    }
  }

  // -- Binding: bind() and one feed per group of jobs ---------------------------------------------

  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
  // The server's limit on ?jobs= (django_sse.session_stream.parse_only).
  const JOBS_PER_STREAM = 100;

  function bind(scope = document) {
    const found = [...scope.querySelectorAll("[data-django-sse-job]")];
    if (scope instanceof root.Element && scope.matches("[data-django-sse-job]")) {
      found.unshift(scope);
    }
    const elements = found.filter((element) => !element.hasAttribute("data-django-sse-bound"));
    const groups = new Map(); // stream URL -> Map(job -> [elements])
    for (const element of elements) {
      element.setAttribute("data-django-sse-bound", "");
      const labels = labelsOf(element);
      wireCancel(element, labels);
      const url = element.getAttribute("data-django-sse-url");
      const job = (element.getAttribute("data-django-sse-job") || "").trim().toLowerCase();
      // Finished: the page already shows all of it. Either way this replaces the text the tag
      // renders for a page whose script did not load.
      setConnection(element, labels, isActive(element) ? "connecting" : "closed");
      if (!url || !UUID.test(job)) {
        console.error("DjangoSSE: not bound, needs data-django-sse-url and a job UUID:", element);
        continue;
      }
      const jobs = groups.get(url) || new Map();
      jobs.set(job, [...(jobs.get(job) || []), element]);
      groups.set(url, jobs);
    }
    const feeds = [];
    for (const [url, jobs] of groups) {
      for (const batch of batches(jobs)) {
        feeds.push(follow(url, batch));
      }
    }
    return feeds;
  }

  function isActive(element) {
    return ACTIVE_STATUSES.has(element.getAttribute("data-django-sse-status") || "pending");
  }

  // The jobs of one stream URL, in groups the server accepts, leaving out groups with nothing
  // running. Finished jobs are listed too when they fit (at their last seq, so they cost
  // nothing): tabs showing the same jobs then ask for the same URL and share one connection.
  function batches(jobs) {
    const running = [...jobs].filter(([, elements]) => elements.some(isActive));
    const listed = jobs.size <= JOBS_PER_STREAM ? [...jobs] : running;
    const out = [];
    for (let start = 0; start < listed.length; start += JOBS_PER_STREAM) {
      const batch = new Map(listed.slice(start, start + JOBS_PER_STREAM));
      if ([...batch.values()].some((elements) => elements.some(isActive))) {
        out.push(batch);
      }
    }
    return out;
  }

  function seqOf(element) {
    const raw = element.getAttribute("data-django-sse-seq") || "0";
    if (!/^\d+$/.test(raw.trim())) {
      console.error("DjangoSSE: data-django-sse-seq is not a number; replaying the job:", element);
      return 0;
    }
    return Number(raw);
  }

  // One feed for some jobs of one stream URL.
  function follow(url, jobs) {
    const positions = {};
    let horizon = Infinity;
    const seen = new Map(); // element -> last seq applied
    const running = new Set(
      [...jobs].filter(([, elements]) => elements.some(isActive)).map(([job]) => job)
    );
    for (const [job, elements] of jobs) {
      for (const element of elements) {
        const seq = seqOf(element);
        seen.set(element, seq);
        positions[job] = Math.min(positions[job] ?? seq, seq);
        horizon = Math.min(horizon, Number(element.getAttribute("data-django-sse-horizon")) || 0);
      }
    }
    // "log" always (the tag's log part), and whatever types the elements ask for.
    const types = new Set(["log"]);
    for (const elements of jobs.values()) {
      for (const element of elements) {
        const wanted = element.getAttribute("data-django-sse-events") || "";
        wanted
          .split(/[\s,]+/)
          .filter(Boolean)
          .forEach((type) => types.add(type));
      }
    }
    const stream = absolute(url);
    stream.searchParams.set("jobs", [...jobs.keys()].sort().join(","));
    const refs = {};
    for (const job of Object.keys(positions)) {
      refs[jobRef(job)] = positions[job];
    }
    const feed = openFeed(
      stream.href,
      {
        kind: "session",
        positions,
        lastEventId: sessionResumePoint(Number.isFinite(horizon) ? horizon : 0, refs),
        types: [...types],
      },
      {
        message(message) {
          const elements = jobs.get(message.job) || [];
          const data = parseData(message.raw);
          for (const element of elements) {
            if (message.seq !== null && message.seq <= seen.get(element)) {
              continue; // already on the page
            }
            seen.set(element, message.seq);
            element.setAttribute("data-django-sse-seq", String(message.seq));
            apply(element, labelsOf(element), message.type, data);
            const detail = { job: message.job, seq: message.seq, type: message.type, data };
            element.dispatchEvent(new CustomEvent("django-sse:event", { bubbles: true, detail }));
            element.dispatchEvent(
              new CustomEvent(`django-sse:${message.type}`, { bubbles: true, detail })
            );
          }
          if (TERMINAL_TYPES.has(message.type)) {
            running.delete(message.job);
            if (running.size === 0) {
              feed.close();
            }
          }
        },
        status(connection, info) {
          // Closed with jobs still running: the server refused the stream or it failed for
          // good, before it ever sent one ("unavailable") or later ("stopped"). Say so rather
          // than leave a bar that looks alive. A job that has ended (as rendered, or since)
          // shows all there is: the connection's state is no concern of its bar.
          const ended = info && info.opened === false ? "unavailable" : "stopped";
          for (const [job, elements] of jobs) {
            let state = "closed";
            if (running.has(job)) {
              state = connection === "closed" ? ended : connection;
            }
            for (const element of elements) {
              setConnection(element, labelsOf(element), state);
            }
          }
        },
      }
    );
    return feed;
  }

  // == The API, and start() =======================================================================
  const DjangoSSE = Object.freeze({
    watch,
    bind,
    LIFECYCLE_TYPES,
    TERMINAL_TYPES: TERMINAL_TYPE_LIST,
    _sameOriginUrl: sameOriginUrl, // for the tests
    // For tests/js only, not API (not in django_sse.d.ts, may change in any release): the
    // parts of the client, to test the tab protocol and the ledger on their own.
    _parts: Object.freeze({ MESSAGE, ROLE, Ledger, openFeed }),
  });

  // Bind what the page holds once it is parsed ("defer" and module scripts run just before
  // that). Without a page (a module imported for server-side rendering) there is nothing to do.
  function start() {
    if (typeof document === "undefined") {
      return;
    }
    if (document.readyState === "loading") {
      document.addEventListener("DOMContentLoaded", () => {
        bind();
        checkStylesheet();
      });
    } else {
      bind();
      checkStylesheet();
    }
  }

  // </module-body>

  root.DjangoSSE = DjangoSSE;
  start();
})(globalThis);
