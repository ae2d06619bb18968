// Several tabs of one browser profile in one process, for the tab protocol's tests: each tab is
// a fresh copy of django_sse.js (load()), and the tabs share a clock, the BroadcastChannels of
// the profile and its Web Locks. Plus a fake one-job stream that serves the tabs' EventSources.
// Not a test file (see fake-browser.mjs).
import { FakeClock, load } from "./fake-browser.mjs";

// Lets every pending promise callback run (setImmediate runs once the microtasks are done).
export function microtasks() {
  return new Promise((resolve) => setImmediate(resolve));
}

/*
 * BroadcastChannel, as the HTML standard says: a message goes to every other open channel of
 * that name in the profile (other tabs, and other channels of the same tab), each in a task of
 * its own (here, a timer of the shared clock), in the order posted, as a structured clone. A
 * channel closed before the task runs does not get it; closing the sender does not take back
 * what it posted.
 */
class FakeChannels {
  constructor(clock) {
    this.clock = clock;
    this.open = new Set();
  }

  classFor(tab) {
    const channels = this;
    return class BroadcastChannel {
      constructor(name) {
        this.name = name;
        this.tab = tab;
        this.closed = false;
        this.listeners = [];
        channels.open.add(this);
        tab.channels.push(this);
      }
      addEventListener(type, listener) {
        if (type === "message") {
          this.listeners.push(listener);
        }
      }
      postMessage(data) {
        if (this.closed) {
          throw new Error("InvalidStateError: the channel is closed");
        }
        for (const channel of channels.open) {
          if (channel !== this && channel.name === this.name) {
            const copy = structuredClone(data);
            channels.clock.setTimeout(() => channel.receive(copy), 0);
          }
        }
      }
      receive(data) {
        if (!this.closed && !this.tab.frozen) {
          for (const listener of this.listeners) {
            listener({ data });
          }
        }
      }
      close() {
        this.closed = true;
        channels.open.delete(this);
      }
    };
  }
}

/*
 * navigator.locks: exclusive locks, granted in the order asked. request(name, options?,
 * callback): the callback is called (in a later microtask) with the lock, which is held until
 * the promise it returns settles; with {ifAvailable: true} it is called with null at once when
 * the lock is taken; {signal} takes back a request still waiting (it rejects with AbortError).
 * A tab that closes releases what it holds and takes back what it waits for.
 */
export class FakeLocks {
  constructor() {
    this.held = new Map(); // name -> the request holding it
    this.waiting = []; // requests, in the order made
  }

  forTab(tab) {
    return {
      request: (name, options, callback) => {
        if (typeof options === "function") {
          return this.request(tab, name, {}, options);
        }
        return this.request(tab, name, options, callback);
      },
    };
  }

  request(tab, name, options, callback) {
    return new Promise((resolve, reject) => {
      const request = { tab, name, callback, resolve, reject };
      if (options.signal?.aborted) {
        reject(new DOMException("aborted", "AbortError"));
        return;
      }
      const taken = this.held.has(name) || this.waiting.some((other) => other.name === name);
      if (options.ifAvailable && taken) {
        Promise.resolve()
          .then(() => callback(null))
          .then(resolve, reject);
        return;
      }
      this.waiting.push(request);
      options.signal?.addEventListener("abort", () => {
        if (this.waiting.includes(request)) {
          this.waiting.splice(this.waiting.indexOf(request), 1);
          reject(new DOMException("aborted", "AbortError"));
        }
      });
      this.grant(name);
    });
  }

  grant(name) {
    if (this.held.has(name)) {
      return;
    }
    const next = this.waiting.find((request) => request.name === name);
    if (!next) {
      return;
    }
    this.waiting.splice(this.waiting.indexOf(next), 1);
    this.held.set(name, next);
    Promise.resolve()
      .then(() => next.callback({ name, mode: "exclusive" }))
      .then(
        (result) => {
          this.release(next);
          next.resolve(result);
        },
        (error) => {
          this.release(next);
          next.reject(error);
        }
      );
  }

  release(request) {
    if (this.held.get(request.name) === request) {
      this.held.delete(request.name);
      this.grant(request.name);
    }
  }

  closeTab(tab) {
    this.waiting = this.waiting.filter((request) => request.tab !== tab);
    for (const request of [...this.held.values()]) {
      if (request.tab === tab) {
        this.release(request);
      }
    }
  }

  holder(name) {
    return this.held.get(name)?.tab ?? null;
  }
}

/*
 * A browser profile: tabs that share a clock, BroadcastChannels and Web Locks.
 * openTab() loads the client in a new tab; tab.close() is what closing a tab does (no script of
 * it runs again: its timers, channels, locks and EventSources go); tab.freeze() stops it from
 * reading its channels (a tab the browser suspended, or busy for long).
 */
export class FakeProfile {
  constructor() {
    this.clock = new FakeClock();
    this.channels = new FakeChannels(this.clock);
    this.locks = new FakeLocks();
    this.tabs = [];
  }

  openTab() {
    const browser = load({ clock: this.clock });
    const tab = { ...browser, channels: [], frozen: false, closed: false, timers: new Set() };
    const { window } = browser;
    // The tab's own timers, so that closing it stops them.
    window.setTimeout = (callback, ms = 0) => {
      const id = this.clock.setTimeout(() => {
        tab.timers.delete(id);
        callback();
      }, ms);
      tab.timers.add(id);
      return id;
    };
    window.clearTimeout = (id) => {
      tab.timers.delete(id);
      this.clock.clearTimeout(id);
    };
    window.BroadcastChannel = this.channels.classFor(tab);
    window.navigator = { locks: this.locks.forTab(tab) };
    window.AbortController = AbortController;
    tab.close = () => {
      tab.closed = true;
      for (const id of tab.timers) {
        this.clock.clearTimeout(id);
      }
      for (const channel of tab.channels) {
        channel.close();
      }
      this.locks.closeTab(tab);
      for (const source of tab.sources) {
        source.close();
      }
    };
    tab.freeze = () => {
      tab.frozen = true;
    };
    // watch() in this tab, recording what it shows: the seq of each event, and the states.
    tab.watch = (url, options = {}) => {
      const shown = { seqs: [], types: [], states: [] };
      shown.watcher = tab.DjangoSSE.watch(url, {
        ...options,
        onEvent(type, data, id) {
          shown.seqs.push(Number(id));
          shown.types.push(type);
        },
        onStatus(state) {
          shown.states.push(state);
        },
      });
      return shown;
    };
    this.tabs.push(tab);
    return tab;
  }

  // Lets `ms` of time pass, running each timer (a channel's message, a tab's timer) as a task
  // of its own, with the promise callbacks it leads to run before the next one.
  async advance(ms = 0) {
    const until = this.clock.now + ms;
    await microtasks();
    while (this.clock.runNext(until)) {
      await microtasks();
    }
    this.clock.now = until;
    await microtasks();
  }
}

/*
 * One job's event stream, as django_sse serves it: events numbered from 1, each with its seq as
 * its id. serve(tab) answers the tab's EventSources not answered yet: it opens them and replays
 * what follows their ?last_event_id=; publish() sends an event to every source being served.
 */
export class FakeJobStream {
  constructor() {
    this.events = [];
    this.served = new Set();
  }

  serve(tab) {
    for (const source of tab.sources) {
      if (this.served.has(source) || source.closed) {
        continue;
      }
      this.served.add(source);
      source.open();
      const after = Number(new URL(source.url).searchParams.get("last_event_id") ?? 0);
      for (const event of this.events.filter((event) => event.seq > after)) {
        source.emit(event.type, event.data, String(event.seq));
      }
    }
  }

  publish(type, data = {}) {
    const event = { seq: this.events.length + 1, type, data };
    this.events.push(event);
    for (const source of this.served) {
      if (!source.closed) {
        source.emit(type, data, String(event.seq));
      }
    }
    return event.seq;
  }
}

export function range(first, last) {
  return Array.from({ length: last - first + 1 }, (_, index) => first + index);
}
