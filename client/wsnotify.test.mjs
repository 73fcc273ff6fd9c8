import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, compareIds } from "./wsnotify.js";

const STABLE_MS = 5000;
const tick = () => new Promise((resolve) => setImmediate(resolve));

/** Fake WebSocket, timers and jitter; one set per test. */
function harness(url, options = {}) {
  const sockets = [];
  class FakeSocket {
    constructor(u) { this.url = u; this.closedWith = undefined; sockets.push(this); }
    close(code) { this.closedWith = code; }
    open() { this.onopen?.({}); }
    send(frame) { this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) }); }
    drop(code, reason = "") { this.onclose?.({ code, reason }); }
  }
  let nextId = 1;
  const timers = new Map();
  const conn = connect(url, {
    WebSocket: FakeSocket,
    random: () => 0.5,
    setTimeout: (fn, ms) => { const id = nextId++; timers.set(id, { fn, ms }); return id; },
    clearTimeout: (id) => { timers.delete(id); },
    ...options,
  });
  const events = [];
  for (const name of ["message", "open", "close", "truncated", "error"]) conn.on(name, (arg) => events.push([name, arg]));
  const find = (stable) => [...timers].find(([, t]) => (t.ms === STABLE_MS) === stable);
  return {
    conn, sockets, timers, events,
    get last() { return sockets[sockets.length - 1]; },
    messages: () => events.filter(([n]) => n === "message").map(([, env]) => env.id),
    /** Delay of the pending reconnect, or undefined. */
    retryDelay: () => find(false)?.[1].ms,
    /** Fires the pending reconnect and lets an async url settle. */
    async reconnect() {
      const [id, t] = find(false);
      timers.delete(id);
      t.fn();
      await tick();
    },
    fireStable() {
      const [id, t] = find(true);
      timers.delete(id);
      t.fn();
    },
  };
}

const env = (id, data = {}, type = "notification") => ({ id, type, data });

test("first connect has no since; reconnect resumes from the last id", async () => {
  const h = harness("ws://h.example/ws?ticket=abc");
  await tick();
  assert.equal(h.sockets.length, 1);
  assert.equal(h.last.url, "ws://h.example/ws?ticket=abc");
  assert.equal(h.conn.state, "connecting");
  h.last.open();
  assert.equal(h.conn.state, "open");
  for (const id of ["5-0", "5-1", "10-0"]) h.last.send(env(id));
  assert.deepEqual(h.messages(), ["5-0", "5-1", "10-0"]);
  assert.equal(h.conn.lastId, "10-0");
  h.last.drop(1001, "server shutting down");
  const close = h.events.find(([n]) => n === "close")[1];
  assert.deepEqual(close, { code: 1001, reason: "server shutting down", willReconnect: true, delay: 125 });
  assert.equal(h.conn.state, "connecting");
  await h.reconnect();
  assert.equal(h.sockets.length, 2);
  assert.equal(h.last.url, "ws://h.example/ws?ticket=abc&since=10-0");
});

test("existing params are kept and a stale since is replaced", async () => {
  const h = harness("wss://h.example/ws?since=1-0&ticket=a.b_c-d&x=%20y", { lastId: "7-3" });
  await tick();
  assert.equal(h.last.url, "wss://h.example/ws?ticket=a.b_c-d&x=%20y&since=7-3");
  h.last.open();
  h.last.send(env("8-0"));
  h.last.drop(4008, "slow consumer");
  await h.reconnect();
  assert.equal(h.last.url, "wss://h.example/ws?ticket=a.b_c-d&x=%20y&since=8-0");
});

test("relative and http(s) URLs resolve against location", async () => {
  globalThis.location = { href: "https://app.example/page/index.html" };
  try {
    const h = harness("/ws?ticket=t", { lastId: "1-0" });
    await tick();
    assert.equal(h.last.url, "wss://app.example/ws?ticket=t&since=1-0");
  } finally {
    delete globalThis.location;
  }
});

test("stream ids compare numerically, not as strings", async () => {
  assert.equal(compareIds("9-0", "10-0"), -1);
  assert.equal(compareIds("10-2", "10-10"), -1);
  assert.equal(compareIds("10-10", "10-10"), 0);
  assert.equal(compareIds("18446744073709551615-0", "18446744073709551614-9"), 1);
  assert.throws(() => compareIds("abc", "1-0"), TypeError);

  const h = harness("ws://h/ws");
  await tick();
  h.last.open();
  for (const id of ["9-0", "10-0", "10-2", "10-10"]) h.last.send(env(id));
  assert.deepEqual(h.messages(), ["9-0", "10-0", "10-2", "10-10"]);
  assert.equal(h.conn.lastId, "10-10");
});

test("duplicates and older stream ids are dropped", async () => {
  const h = harness("ws://h/ws");
  await tick();
  h.last.open();
  for (const id of ["10-0", "10-0", "9-5", "10-1", "2-0", "10-1"]) h.last.send(env(id));
  assert.deepEqual(h.messages(), ["10-0", "10-1"]);
  // A replay after reconnect starts at the since id itself: it is dropped.
  h.last.drop(1013);
  await h.reconnect();
  h.last.open();
  for (const id of ["10-1", "10-2"]) h.last.send(env(id));
  assert.deepEqual(h.messages(), ["10-0", "10-1", "10-2"]);
});

test("opaque ids are deduped by exact match in a bounded set and never become lastId", async () => {
  const h = harness("ws://h/ws", { lastId: "3-0" });
  await tick();
  h.last.open();
  for (const id of ["node1-n1", "node1-n1", "node1-n2", "1-0"]) h.last.send(env(id));
  assert.deepEqual(h.messages(), ["node1-n1", "node1-n2"]);
  assert.equal(h.conn.lastId, "3-0");
  for (let i = 3; i < 1003; i++) h.last.send(env("node1-n" + i));
  h.last.send(env("node1-n1")); // evicted from the recent set by now
  h.last.send(env("node1-n1002")); // still recent
  const ids = h.messages();
  assert.equal(ids.length, 2 + 1000 + 1);
  assert.equal(ids.at(-1), "node1-n1");
});

test("a truncated frame fires truncated, not message, and keeps lastId", async () => {
  const h = harness("ws://h/ws", { lastId: "5-0" });
  await tick();
  h.last.open();
  h.last.send({ id: "", type: "wsnotify.truncated", data: { since: "5-0" } });
  h.last.send({ id: "99-0", type: "wsnotify.other", data: null });
  assert.deepEqual(h.events.filter(([n]) => n === "truncated"), [["truncated", { since: "5-0" }]]);
  assert.deepEqual(h.messages(), []);
  assert.equal(h.conn.lastId, "5-0");
  h.last.send(env("6-0"));
  assert.deepEqual(h.messages(), ["6-0"]);
});

test("hello sets lastId only when none is known, so a socket closed before any message resumes", async () => {
  const h = harness("ws://h/ws?ticket=t");
  await tick();
  h.last.open();
  h.last.send({ id: "", type: "wsnotify.hello", data: { last_id: "0-0" } });
  assert.equal(h.conn.lastId, "0-0");
  assert.deepEqual(h.messages(), []);
  h.last.drop(4008);
  await h.reconnect();
  assert.equal(h.last.url, "ws://h/ws?ticket=t&since=0-0");
  h.last.open();
  h.last.send({ id: "", type: "wsnotify.hello", data: { last_id: "0-0" } });
  h.last.send(env("7-0"));
  h.last.send({ id: "", type: "wsnotify.hello", data: { last_id: "1-0" } }); // an older start never moves lastId back
  assert.equal(h.conn.lastId, "7-0");
  assert.deepEqual(h.messages(), ["7-0"]);
});

test("backoff grows exponentially with jitter and resets after a message", async () => {
  const draws = [];
  let r = 0.5;
  const h = harness("ws://h/ws", { minDelay: 100, maxDelay: 1000, random: () => { draws.push(r); return r; } });
  await tick();
  const delays = [];
  for (let i = 0; i < 7; i++) {
    h.last.drop(1006);
    delays.push(h.retryDelay());
    await h.reconnect();
  }
  // 0.5 * min(1000, 100 * 2^n)
  assert.deepEqual(delays, [50, 100, 200, 400, 500, 500, 500]);

  // Full jitter: the bounds of random map to [0, cap).
  r = 0;
  h.last.drop(1006);
  assert.equal(h.retryDelay(), 0);
  await h.reconnect();
  r = 0.999999;
  h.last.drop(1006);
  assert.equal(h.retryDelay(), 999);
  await h.reconnect();

  r = 0.5;
  h.last.open();
  h.last.drop(1006); // open without a message does not reset
  assert.equal(h.retryDelay(), 500);
  await h.reconnect();
  h.last.open();
  h.last.send(env("1-0"));
  h.last.drop(1000);
  assert.equal(h.retryDelay(), 50);
  await h.reconnect();
  h.last.drop(1006);
  assert.equal(h.retryDelay(), 100);
});

test("backoff resets after a connection stays open for 5 s", async () => {
  const h = harness("ws://h/ws", { minDelay: 100, maxDelay: 1000 });
  await tick();
  for (let i = 0; i < 3; i++) { h.last.drop(1006); await h.reconnect(); }
  h.last.open();
  h.fireStable();
  h.last.drop(1001);
  assert.equal(h.retryDelay(), 50);
  // A close before 5 s cancels the stable timer.
  await h.reconnect();
  h.last.open();
  h.last.drop(1001);
  assert.equal([...h.timers.values()].filter((t) => t.ms === STABLE_MS).length, 0);
  assert.equal(h.retryDelay(), 100);
});

test("close() stops reconnecting and silences the socket", async () => {
  const h = harness("ws://h/ws");
  await tick();
  h.last.open();
  const sock = h.last;
  h.conn.close();
  assert.equal(h.conn.state, "closed");
  assert.equal(sock.closedWith, 1000);
  assert.equal(h.timers.size, 0);
  sock.drop?.(1000);
  assert.equal(h.sockets.length, 1);
  assert.equal(h.events.filter(([n]) => n === "close").length, 0);

  // During the backoff wait.
  const g = harness("ws://h/ws");
  await tick();
  g.last.drop(1006);
  assert.equal(g.retryDelay(), 125);
  g.conn.close();
  assert.equal(g.timers.size, 0);
  assert.equal(g.sockets.length, 1);
  g.conn.close(); // idempotent
});

test("close() while an async url is pending opens nothing", async () => {
  let release;
  const h = harness(() => new Promise((resolve) => { release = resolve; }));
  h.conn.close();
  release("ws://h/ws");
  await tick();
  assert.equal(h.sockets.length, 0);
  assert.equal(h.timers.size, 0);
});

test("an async url is called and awaited before every connect", async () => {
  let calls = 0;
  const url = async () => { calls++; await tick(); return `ws://h/ws?ticket=t${calls}`; };
  const h = harness(url);
  await tick(); await tick();
  assert.equal(h.last.url, "ws://h/ws?ticket=t1");
  h.last.open();
  h.last.send(env("4-2"));
  h.last.drop(1006);
  await h.reconnect(); await tick();
  assert.equal(calls, 2);
  assert.equal(h.last.url, "ws://h/ws?ticket=t2&since=4-2");
});

test("a failing url function reports an error and retries with backoff", async () => {
  let calls = 0;
  const h = harness(async () => { if (++calls === 1) throw new Error("ticket endpoint down"); return "ws://h/ws"; });
  await tick();
  assert.equal(h.sockets.length, 0);
  assert.equal(h.events[0][0], "error");
  assert.equal(h.events[0][1].message, "ticket endpoint down");
  assert.equal(h.retryDelay(), 125);
  await h.reconnect();
  assert.equal(h.sockets.length, 1);
});

test("listener exceptions and bad frames do not break the connection", async () => {
  const h = harness("ws://h/ws");
  await tick();
  const off = h.conn.on("message", () => { throw new Error("boom"); });
  h.last.open();
  h.last.send(env("1-0"));
  h.last.send("not json");
  h.last.send(env("2-0"));
  const errors = h.events.filter(([n]) => n === "error").map(([, e]) => e);
  assert.equal(errors.length, 3);
  assert.equal(errors[0].message, "boom");
  assert.ok(errors[1] instanceof SyntaxError);
  assert.deepEqual(h.messages(), ["1-0", "2-0"]);
  assert.equal(h.conn.lastId, "2-0");
  assert.equal(h.conn.state, "open");
  off();
  h.last.send(env("3-0"));
  assert.equal(h.events.filter(([n]) => n === "error").length, 3);
});

test("without error listeners, listener exceptions go to console.error", async (t) => {
  const logged = [];
  t.mock.method(console, "error", (err) => logged.push(err));
  const sockets = [];
  class S { constructor(u) { this.url = u; sockets.push(this); } close() {} }
  const conn = connect("ws://h/ws", { WebSocket: S, setTimeout: () => 0, clearTimeout: () => {} });
  const seen = [];
  conn.on("message", () => { throw new Error("listener bug"); });
  conn.on("message", (e) => seen.push(e.id));
  sockets[0].onopen({});
  sockets[0].onmessage({ data: JSON.stringify(env("1-0")) });
  assert.deepEqual(seen, ["1-0"]);
  assert.equal(logged.length, 1);
  assert.equal(logged[0].message, "listener bug");
  conn.close();
});

test("on returns an unsubscribe function; off removes a listener", async () => {
  const h = harness("ws://h/ws");
  await tick();
  const a = [], b = [];
  const fa = (e) => a.push(e.id);
  const unsubscribe = h.conn.on("message", fa);
  h.conn.on("message", (e) => b.push(e.id));
  h.last.open();
  h.last.send(env("1-0"));
  unsubscribe();
  h.last.send(env("2-0"));
  h.conn.on("message", fa);
  h.conn.off("message", fa);
  h.last.send(env("3-0"));
  assert.deepEqual(a, ["1-0"]);
  assert.deepEqual(b, ["1-0", "2-0", "3-0"]);
});

test("storageKey loads and saves lastId through localStorage", async () => {
  const store = new Map([["notes:last", "3-0"]]);
  globalThis.localStorage = {
    getItem: (k) => (store.has(k) ? store.get(k) : null),
    setItem: (k, v) => { store.set(k, String(v)); },
  };
  try {
    const h = harness("ws://h/ws", { storageKey: "notes:last" });
    await tick();
    assert.equal(h.conn.lastId, "3-0");
    assert.equal(h.last.url, "ws://h/ws?since=3-0");
    h.last.open();
    h.last.send(env("3-0")); // duplicate of the stored id
    h.last.send(env("4-0"));
    h.last.send(env("other-node-n7")); // opaque: not stored
    assert.deepEqual(h.messages(), ["4-0", "other-node-n7"]);
    assert.equal(store.get("notes:last"), "4-0");
    h.conn.close();

    // A later page load resumes from the stored id; the later of option and store wins.
    const g = harness("ws://h/ws", { storageKey: "notes:last", lastId: "2-0" });
    await tick();
    assert.equal(g.conn.lastId, "4-0");
    assert.equal(g.last.url, "ws://h/ws?since=4-0");
    g.conn.close();

    store.set("notes:last", "garbage");
    const k = harness("ws://h/ws", { storageKey: "notes:last" });
    await tick();
    assert.equal(k.conn.lastId, undefined);
    assert.equal(k.last.url, "ws://h/ws");
    k.conn.close();
  } finally {
    delete globalThis.localStorage;
  }
});

test("storageKey without localStorage, or a throwing one, still connects", async () => {
  const h = harness("ws://h/ws", { storageKey: "k" });
  await tick();
  h.last.open();
  h.last.send(env("1-0"));
  assert.equal(h.conn.lastId, "1-0");

  globalThis.localStorage = {
    getItem: () => { throw new Error("SecurityError"); },
    setItem: () => { throw new Error("QuotaExceededError"); },
  };
  try {
    const g = harness("ws://h/ws", { storageKey: "k", lastId: "5-0" });
    await tick();
    g.last.open();
    g.last.send(env("6-0"));
    assert.equal(g.conn.lastId, "6-0");
    assert.equal(g.events.filter(([n]) => n === "error").length, 0);
  } finally {
    delete globalThis.localStorage;
  }
});
