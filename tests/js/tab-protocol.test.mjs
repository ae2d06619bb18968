// The tab protocol: tabs of one profile share one connection (the leader's), and every tab shows
// every event exactly once, in order, whichever tab holds the connection, whenever a tab joins,
// and whatever the leader's tab does. Tabs, BroadcastChannel, Web Locks and the stream are fakes
// (support/tabs.mjs); the client in each tab is the real django_sse.js.
// Run with `node --test tests/js/` (tests/test_js.py does, from pytest); no npm packages.
import assert from "node:assert/strict";
import { test } from "node:test";

import { FakeEventSource, load } from "./support/fake-browser.mjs";
import { FakeJobStream, FakeProfile, microtasks, range } from "./support/tabs.mjs";

const JOB = "6f1c2a4e-0000-4000-8000-000000000001";
const STREAM = `/sse/jobs/${JOB}/events/`;
const SYNC_TIMEOUT_MS = 3000;
const TAKEOVER_DELAY_MS = 100;

// `count` tabs of one login following the job, settled: the first one leads.
async function tabsFollowing(count, options = {}) {
  const profile = new FakeProfile();
  const stream = new FakeJobStream();
  const tabs = [];
  const shown = [];
  for (let index = 0; index < count; index += 1) {
    const tab = profile.openTab();
    tabs.push(tab);
    shown.push(tab.watch(STREAM, { identity: "alice", ...options }));
    await profile.advance();
  }
  stream.serve(tabs[0]);
  await profile.advance();
  return { profile, stream, tabs, shown };
}

function resumePoint(source) {
  return new URL(source.url).searchParams.get("last_event_id");
}

function publish(stream, count) {
  for (let index = 0; index < count; index += 1) {
    stream.publish("progress", { current: index, total: 10 });
  }
}

test("tabs of one login share the first tab's connection", async () => {
  const { profile, stream, tabs, shown } = await tabsFollowing(3);
  assert.deepEqual(
    tabs.map((tab) => tab.sources.length),
    [1, 0, 0]
  );
  publish(stream, 3);
  await profile.advance();
  for (const tab of shown) {
    assert.deepEqual(tab.seqs, [1, 2, 3]);
    assert.deepEqual(tab.states, ["connecting", "open"]);
  }
});

test("the leader's tab closes: another takes over where it was, none lost or twice", async () => {
  const { profile, stream, tabs, shown } = await tabsFollowing(3);
  publish(stream, 4); // the last ones still on their way to the other tabs as it closes
  tabs[0].close();
  await profile.advance(TAKEOVER_DELAY_MS);
  // One tab took over, with a connection that resumes after the last event it showed.
  const leaders = tabs.slice(1).filter((tab) => tab.sources.length > 0);
  assert.equal(leaders.length, 1);
  assert.equal(leaders[0].sources.length, 1);
  assert.equal(resumePoint(leaders[0].sources[0]), "4");
  stream.serve(leaders[0]);
  await profile.advance();
  publish(stream, 2);
  stream.publish("succeeded", { result: 6 });
  await profile.advance();
  for (const tab of shown.slice(1)) {
    assert.deepEqual(tab.seqs, range(1, 7));
    assert.equal(tab.types.at(-1), "succeeded");
    assert.equal(tab.watcher.state, "closed");
  }
  assert.equal(tabs[1].sources.length + tabs[2].sources.length, 1);
});

test("a late tab is caught up from the leader's memory: every event once, in order", async () => {
  const { profile, stream, tabs, shown } = await tabsFollowing(1);
  publish(stream, 5);
  await profile.advance();
  // From the start (its page showed nothing yet), and from where its page was.
  const fromStart = profile.openTab().watch(STREAM, { identity: "alice" });
  const fromThree = profile.openTab().watch(STREAM, { identity: "alice", lastEventId: 3 });
  await profile.advance();
  assert.deepEqual(fromStart.seqs, range(1, 5));
  assert.deepEqual(fromThree.seqs, [4, 5]);
  publish(stream, 1);
  await profile.advance();
  assert.deepEqual(shown[0].seqs, range(1, 6));
  assert.deepEqual(fromStart.seqs, range(1, 6));
  assert.deepEqual(fromThree.seqs, range(4, 6));
  assert.deepEqual(fromStart.states, ["connecting", "open"]);
  assert.deepEqual(
    profile.tabs.map((tab) => tab.sources.length),
    [1, 0, 0]
  );
  assert.equal(tabs.length, 1);
});

test("events the leader gets while a tab joins reach that tab once, in order", async () => {
  const { profile, stream } = await tabsFollowing(1);
  publish(stream, 5);
  await profile.advance();
  const late = profile.openTab().watch(STREAM, { identity: "alice" });
  await microtasks(); // it has asked to join; the leader has not read it yet
  publish(stream, 1); // relayed to the joining tab before the leader's answer
  await profile.advance();
  publish(stream, 1);
  await profile.advance();
  assert.deepEqual(late.seqs, range(1, 7));
});

test("a tab further behind than the leader's memory gets a connection of its own", async () => {
  // The leader's page was rendered at seq 3: it cannot tell a tab what came before.
  const { profile, stream, shown } = await tabsFollowing(1, { lastEventId: 3 });
  publish(stream, 5);
  await profile.advance();
  assert.deepEqual(shown[0].seqs, [4, 5]);
  const behind = profile.openTab();
  const older = behind.watch(STREAM, { identity: "alice", lastEventId: 1 });
  await profile.advance();
  assert.equal(behind.sources.length, 1);
  assert.equal(resumePoint(behind.sources[0]), "1");
  stream.serve(behind);
  publish(stream, 1);
  await profile.advance();
  assert.deepEqual(older.seqs, range(2, 6));
  assert.deepEqual(shown[0].seqs, range(4, 6));
});

test("the catch-up is proven gapless from the leader's ledger, or refused", () => {
  const { Ledger } = load().DjangoSSE._parts;
  const message = (seq, job = "") => ({ type: "progress", id: String(seq), raw: "{}", job, seq });
  // The seqs of a catch-up, or null (its arrays are of the script's realm: copied into ours).
  const seqs = (messages) => (messages === null ? null : Array.from(messages, (m) => m.seq));
  const ledger = new Ledger(false, { positions: { "": 3 }, lastEventId: 3 });
  for (const seq of [4, 5, 5, 3, 6]) {
    ledger.record(message(seq));
  }
  assert.deepEqual(seqs(ledger.catchUp({ "": 3 })), [4, 5, 6]);
  assert.deepEqual(seqs(ledger.catchUp({ "": 5 })), [6]);
  assert.deepEqual(seqs(ledger.catchUp({ "": 6 })), []);
  assert.equal(ledger.catchUp({ "": 2 }), null); // before what it knows
  assert.equal(ledger.catchUp({}), null); // from the start, which it never saw
  assert.equal(ledger.catchUp({ "": 5, other: 1 }), null); // a job it knows nothing of
  assert.equal(ledger.resumeId(), "6");
  // Its memory is bounded: once the oldest events are forgotten, only tabs past them qualify.
  const full = new Ledger(false, { positions: { "": 0 } });
  for (let seq = 1; seq <= 5001; seq += 1) {
    full.record(message(seq));
  }
  assert.equal(full.catchUp({ "": 0 }), null);
  assert.deepEqual(seqs(full.catchUp({ "": 1 })), range(2, 5001));
});

test("a tab of another login is not fed by the leader: it asks the server itself", async () => {
  const { profile, stream, shown } = await tabsFollowing(1);
  const other = profile.openTab();
  const bob = other.watch(STREAM, { identity: "bob" });
  await profile.advance();
  publish(stream, 3);
  await profile.advance();
  assert.deepEqual(shown[0].seqs, [1, 2, 3]);
  // Its own connection, from the start; the server refuses it (the job is not its).
  assert.equal(other.sources.length, 1);
  assert.equal(resumePoint(other.sources[0]), null);
  other.sources[0].fail(FakeEventSource.CLOSED);
  await profile.advance();
  assert.deepEqual(bob.seqs, []);
  assert.deepEqual(bob.states, ["connecting", "closed"]);
  assert.notEqual(other.channels[0].name, profile.tabs[0].channels[0].name);
});

test("a leader that does not answer: the joining tab opens a connection in time", async () => {
  const { profile, stream, tabs } = await tabsFollowing(1);
  publish(stream, 2);
  await profile.advance();
  tabs[0].freeze(); // it holds the lock but reads nothing
  const stuck = profile.openTab();
  const shown = stuck.watch(STREAM, { identity: "alice", lastEventId: 1 });
  await profile.advance(SYNC_TIMEOUT_MS - 1);
  assert.equal(stuck.sources.length, 0);
  await profile.advance(1);
  assert.equal(stuck.sources.length, 1);
  assert.equal(resumePoint(stuck.sources[0]), "1");
  stream.serve(stuck);
  await profile.advance();
  assert.deepEqual(shown.seqs, [2]);
});

test("the leader's last event on its way as its lock is released: no takeover", async () => {
  const { profile, stream, tabs, shown } = await tabsFollowing(2);
  publish(stream, 2);
  await profile.advance();
  // The job ends: the leader closes its connection and releases the lock at once, before the
  // other tab has read that last event.
  stream.publish("succeeded", { result: null });
  await profile.advance(10 * TAKEOVER_DELAY_MS);
  assert.deepEqual(shown[1].seqs, [1, 2, 3]);
  assert.equal(shown[1].watcher.state, "closed");
  assert.equal(tabs[1].sources.length, 0);
});

test("the leader's connection state is every tab's, its end too", async () => {
  const { profile, tabs, shown } = await tabsFollowing(2);
  tabs[0].sources[0].fail(FakeEventSource.CONNECTING);
  await profile.advance();
  assert.deepEqual(shown[1].states, ["connecting", "open", "reconnecting"]);
  tabs[0].sources[0].open();
  tabs[0].sources[0].fail(FakeEventSource.CLOSED); // refused for good: 204, 404
  await profile.advance();
  for (const tab of shown) {
    assert.deepEqual(tab.states, ["connecting", "open", "reconnecting", "open", "closed"]);
  }
  assert.equal(tabs[1].sources.length, 0);
});

test("a tab on a connection of its own that is refused ends only itself", async () => {
  // A tab behind the leader's memory streams alone; the server then refuses it for good (429:
  // too many streams of this visitor). The leader, its follower and its connection go on.
  const { profile, stream, tabs, shown } = await tabsFollowing(2, { lastEventId: 3 });
  publish(stream, 5);
  await profile.advance();
  const behind = profile.openTab();
  const older = behind.watch(STREAM, { identity: "alice", lastEventId: 1 });
  await profile.advance();
  assert.equal(behind.sources.length, 1);
  behind.sources[0].fail(FakeEventSource.CLOSED);
  await profile.advance();
  assert.equal(older.states.at(-1), "closed");
  publish(stream, 1);
  await profile.advance();
  for (const tab of shown) {
    assert.deepEqual(tab.seqs, range(4, 6));
    assert.notEqual(tab.states.at(-1), "closed");
  }
  assert.equal(tabs[0].sources.length, 1);
});

test("the leader's tab closes while a tab joins: that tab joins the next leader", async () => {
  const { profile, stream, tabs } = await tabsFollowing(2);
  publish(stream, 3);
  await profile.advance();
  const joining = profile.openTab();
  const shown = joining.watch(STREAM, { identity: "alice" });
  await microtasks(); // it has asked to join; the leader goes before it reads that
  tabs[0].close();
  await profile.advance(TAKEOVER_DELAY_MS);
  assert.equal(tabs[1].sources.length, 1); // the next leader
  stream.serve(tabs[1]);
  publish(stream, 1);
  await profile.advance(2 * SYNC_TIMEOUT_MS);
  assert.deepEqual(shown.seqs, range(1, 4));
  assert.equal(joining.sources.length, 0);
});

test("a tab joining the all-jobs stream is not sent jobs that ended before it came", async () => {
  const profile = new FakeProfile();
  const running = "7a2b3c4d-0000-4000-8000-000000000002";
  const follow = (tab) => {
    const shown = [];
    tab.DjangoSSE.watch("/sse/events/", {
      kind: "session",
      identity: "alice",
      onEvent: (type, data, id, job, seq) => shown.push(`${job.slice(0, 2)} ${seq} ${type}`),
    });
    return shown;
  };
  const leader = profile.openTab();
  const leaderShows = follow(leader);
  await profile.advance();
  leader.sources[0].open();
  const send = (job, seq, type) =>
    leader.sources[0].emit(type, { job, seq, data: {} }, `1.${job.slice(0, 8)}${seq}`);
  send(JOB, 1, "started");
  send(JOB, 2, "succeeded");
  send(running, 1, "started");
  await profile.advance();
  const late = profile.openTab();
  const lateShows = follow(late);
  await profile.advance();
  send(running, 2, "progress");
  await profile.advance();
  assert.deepEqual(leaderShows, [
    "6f 1 started",
    "6f 2 succeeded",
    "7a 1 started",
    "7a 2 progress",
  ]);
  assert.deepEqual(lateShows, ["7a 1 started", "7a 2 progress"]);
  assert.equal(late.sources.length, 0);
});
