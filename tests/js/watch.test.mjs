// DjangoSSE.watch()'s options, in the classic script.
// Run with `node --test tests/js/` (tests/test_js.py does, from pytest); no npm packages.
import assert from "node:assert/strict";
import { test } from "node:test";

import { load } from "./support/fake-browser.mjs";

const STREAM = "/sse/jobs/6f1c2a4e-0000-4000-8000-000000000001/events/";

// A browser that can share a connection between tabs: what channels and locks were asked for.
function sharingBrowser() {
  const browser = load();
  const channels = [];
  const locks = [];
  browser.window.BroadcastChannel = class {
    constructor(name) {
      this.name = name;
      channels.push(this);
    }
    addEventListener() {}
    postMessage() {}
    close() {}
  };
  browser.window.navigator = {
    locks: {
      request(name) {
        locks.push(name);
        return new Promise(() => {}); // never granted: this tab waits to lead
      },
    },
  };
  return { ...browser, channels, locks };
}

test("watch() shares under the identity it is given, on a page without the tag's", () => {
  const { DjangoSSE, channels, locks, sources } = sharingBrowser();
  const watcher = DjangoSSE.watch(STREAM, { identity: "tag-of-this-login" });
  assert.equal(channels.length, 1);
  assert.match(channels[0].name, /^django_sse tag-of-this-login https:\/\/app\.example\/sse\//);
  assert.deepEqual(locks, [channels[0].name]);
  assert.equal(sources.length, 0); // the tab holding the lock has the connection
  watcher.close();
});

test("watch() without an identity, on a page without the tag's, does not share", () => {
  const { DjangoSSE, channels, sources } = sharingBrowser();
  const watcher = DjangoSSE.watch(STREAM);
  assert.equal(channels.length, 0);
  assert.equal(sources.length, 1);
  watcher.close();
});
