// Fakes of the few browser APIs django_sse.js uses, for `node --test tests/js/` (no npm
// packages). Not a test file itself: Node's runner only runs files named *.test.mjs.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import vm from "node:vm";

// DJANGO_SSE_JS names another copy of the script (DJANGO_SSE_MJS of the module): to see a test
// fail on an older version.
const SCRIPT = readFileSync(
  process.env.DJANGO_SSE_JS ||
    new URL("../../../django_sse/static/django_sse/django_sse.js", import.meta.url),
  "utf8"
);
const MODULE = process.env.DJANGO_SSE_MJS
  ? pathToFileURL(process.env.DJANGO_SSE_MJS)
  : new URL("../../../django_sse/static/django_sse/django_sse.mjs", import.meta.url);
export const PAGE = "https://app.example/reports/?month=10";

// Just enough of a DOM element for bind(): attributes, children, [name] / [name="value"]
// selectors, listeners, the CSSOM's style.setProperty and dispatched events.
export class FakeElement {
  constructor(attributes = {}, children = []) {
    this.attributes = new Map(Object.entries(attributes));
    this.children = children;
    this.parent = null;
    this.listeners = new Map();
    this.dispatched = [];
    this.textContent = "";
    this.hidden = false;
    this.disabled = false;
    this.style = {
      properties: {},
      setProperty: (name, value) => (this.style.properties[name] = value),
    };
    for (const child of children) {
      child.parent = this;
    }
  }
  getAttribute(name) {
    return this.attributes.has(name) ? this.attributes.get(name) : null;
  }
  hasAttribute(name) {
    return this.attributes.has(name);
  }
  setAttribute(name, value) {
    this.attributes.set(name, String(value));
  }
  removeAttribute(name) {
    this.attributes.delete(name);
  }
  matches(selector) {
    const [, name, value] = selector.match(/^\[([\w-]+)(?:="([^"]*)")?\]$/);
    return this.hasAttribute(name) && (value === undefined || this.getAttribute(name) === value);
  }
  closest(selector) {
    for (let node = this; node; node = node.parent) {
      if (node.matches(selector)) {
        return node;
      }
    }
    return null;
  }
  querySelectorAll(selector) {
    const found = [];
    const walk = (node) => {
      for (const child of node.children) {
        if (child.matches(selector)) {
          found.push(child);
        }
        walk(child);
      }
    };
    walk(this);
    return found;
  }
  addEventListener(type, listener) {
    this.listeners.set(type, listener);
  }
  dispatchEvent(event) {
    this.dispatched.push(event);
    return true;
  }
}

// Timers that run only when the test says how much time passed.
export class FakeClock {
  constructor() {
    this.now = 0;
    this.timers = new Map();
    this.nextId = 1;
  }
  setTimeout = (callback, ms = 0) => {
    const id = this.nextId++;
    this.timers.set(id, { at: this.now + ms, callback });
    return id;
  };
  clearTimeout = (id) => {
    this.timers.delete(id);
  };
  // Runs the first timer due by `until`, if any: false when there is none.
  runNext(until) {
    const due = [...this.timers]
      .filter(([, timer]) => timer.at <= until)
      .sort((a, b) => a[1].at - b[1].at);
    if (due.length === 0) {
      return false;
    }
    const [id, timer] = due[0];
    this.timers.delete(id);
    this.now = timer.at;
    timer.callback();
    return true;
  }
  tick(ms) {
    const until = this.now + ms;
    for (;;) {
      const due = [...this.timers]
        .filter(([, timer]) => timer.at <= until)
        .sort((a, b) => a[1].at - b[1].at);
      if (due.length === 0) {
        break;
      }
      const [id, timer] = due[0];
      this.timers.delete(id);
      this.now = timer.at;
      timer.callback();
    }
    this.now = until;
  }
}

// An EventSource the test drives: open(), emit(), fail(readyState). Each fake browser has a
// subclass of its own, whose `created` lists the sources made in that browser.
export class FakeEventSource {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSED = 2;
  constructor(url, init) {
    this.url = url;
    this.init = init;
    this.readyState = FakeEventSource.CONNECTING;
    this.listeners = new Map();
    this.closed = false;
    new.target.created.push(this);
  }
  addEventListener(type, listener) {
    this.listeners.set(type, [...(this.listeners.get(type) || []), listener]);
  }
  close() {
    this.closed = true;
    this.readyState = FakeEventSource.CLOSED;
  }
  dispatch(type, event) {
    for (const listener of this.listeners.get(type) || []) {
      listener(event);
    }
  }
  open() {
    this.readyState = FakeEventSource.OPEN;
    this.dispatch("open", {});
  }
  // CONNECTING: the browser retries (a dropped connection); CLOSED: it gave up for good.
  fail(readyState) {
    this.readyState = readyState;
    this.dispatch("error", {});
  }
  emit(type, data, lastEventId = "") {
    this.dispatch(type, { data: JSON.stringify(data), lastEventId });
  }
}

/*
 * A fresh copy of the client in a fake window. What it fetches and logs is recorded.
 * options.stylesheet: undefined (no <link data-django-sse-stylesheet> on the page), or
 * {loaded: bool}; options.pageReady: the document's readyState once the page has loaded;
 * options.clock: a FakeClock to share with other fake browsers (tabs), else one of its own.
 */
export function load(options = {}) {
  const browser = fakeBrowser(options);
  vm.runInNewContext(SCRIPT, browser.window);
  return { ...browser, DjangoSSE: browser.window.DjangoSSE };
}

// The browser APIs a module finds on the global object: what importModule() puts there.
const MODULE_GLOBALS = [
  "document",
  "location",
  "getComputedStyle",
  "addEventListener",
  "Element",
  "HTMLProgressElement",
  "CustomEvent",
  "EventSource",
];
let imports = 0;

/*
 * A fresh instance of the ES module (django_sse.mjs) in Node's own global scope, given the fake
 * window's APIs (not its timers nor its console: those stay Node's). Like load(), plus
 * `module`, the module's namespace, and `DjangoSSE`, its default export.
 */
export async function importModule(options = {}) {
  const browser = fakeBrowser(options);
  for (const name of MODULE_GLOBALS) {
    globalThis[name] = browser.window[name];
  }
  // A new URL is a new module instance, evaluated again, in the globals just set.
  const module = await import(`${MODULE.href}?instance=${++imports}`);
  return { ...browser, module, DjangoSSE: module.default };
}

// The module's URL, for a test that imports it itself.
export const MODULE_URL = MODULE;

function fakeBrowser(options) {
  const fetched = [];
  const errors = [];
  const warnings = [];
  const clock = options.clock || new FakeClock();
  const location = new URL(PAGE);
  const windowListeners = new Map();
  const documentListeners = new Map();
  const page = new FakeElement();
  const link = options.stylesheet
    ? { href: "https://app.example/static/django_sse/django_sse.css" }
    : null;
  const documentElement = new FakeElement();
  const EventSource = class extends FakeEventSource {
    static created = [];
  };
  FakeEventSource.created = EventSource.created; // the latest browser's
  const window = {
    location: { href: location.href, origin: location.origin },
    document: {
      readyState: "loading", // bind() runs at domReady(), or when the test calls it
      baseURI: location.href,
      cookie: "csrftoken=s3cret-token",
      documentElement,
      addEventListener(type, listener) {
        documentListeners.set(type, listener);
      },
      querySelector(selector) {
        return selector === "link[data-django-sse-stylesheet]" ? link : null;
      },
      querySelectorAll(selector) {
        return page.querySelectorAll(selector);
      },
    },
    console: {
      error: (...args) => errors.push(args),
      warn: (...args) => warnings.push(args),
    },
    fetch: async (url, init) => {
      fetched.push({ url, init });
      return { status: 202 };
    },
    getComputedStyle(element) {
      return {
        getPropertyValue(name) {
          const loaded = element === documentElement && options.stylesheet?.loaded;
          return name === "--django-sse-stylesheet" && loaded ? " loaded" : "";
        },
      };
    },
    addEventListener(type, listener) {
      windowListeners.set(type, listener);
    },
    Element: FakeElement,
    HTMLProgressElement: class HTMLProgressElement {},
    CustomEvent: class CustomEvent {
      constructor(type, init) {
        this.type = type;
        this.detail = init?.detail;
      }
    },
    EventSource,
    URL,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
  };
  window.window = window;
  return {
    window,
    page,
    fetched,
    errors,
    warnings,
    clock,
    sources: EventSource.created,
    // What the browser does once the page is parsed: the script binds what `page` holds.
    domReady() {
      window.document.readyState = "interactive";
      documentListeners.get("DOMContentLoaded")?.({});
    },
    // What the browser does once every resource of the page is in (or failed).
    loadPage() {
      window.document.readyState = "complete";
      windowListeners.get("load")?.({});
    },
  };
}
