/**
 * Browser client for a wsnotify server. Dependency-free ES module.
 *
 * Contract:
 * - `connect(url, options)` opens a socket right away and keeps one open until
 *   `close()`. `url` is a string or a function (sync or async) returning one;
 *   the function is called before every (re)connect, so it can fetch a fresh
 *   signed ticket. Relative and http(s) URLs resolve against `location` and
 *   map to ws(s).
 * - When a last id is known, `since=<lastId>` is set on the URL (replacing a
 *   `since` already there; other query parameters are kept byte for byte).
 *   With no known last id the URL is used as given.
 * - Every text frame is an envelope `{id, type, data}`. Stream ids
 *   ("<ms>-<seq>", decimal) compare numerically: one at or below lastId is a
 *   duplicate and dropped; a greater one becomes lastId (saved to
 *   `localStorage[storageKey]` when set) before "message" fires. Any other id
 *   is opaque: delivered once, by exact match against the last 1000 opaque
 *   ids, and never becomes lastId (the server only resumes from stream ids).
 * - Types starting with "wsnotify." are control frames: never "message".
 *   "wsnotify.truncated" fires "truncated" with `{since}`: the app must reload
 *   its state from its own backend. "wsnotify.hello", the first frame of a
 *   socket, names the id its stream starts after: it becomes lastId when none
 *   is known yet, so a socket closed before its first notification resumes.
 * - Every close, whatever its code (1000, 1001, 1003, 1009, 1013, 4008, or
 *   1006 for a refused upgrade), schedules a reconnect after a delay drawn
 *   uniformly from [0, min(maxDelay, minDelay * 2^n)], n counting attempts.
 *   n resets when a frame arrives or a socket stays open for 5 s.
 * - Listener exceptions never break the connection: they go to "error"
 *   listeners, or to console.error when there are none.
 * - After `close()` no event fires and no reconnect happens.
 */

const STREAM_ID = /^(\d+)-(\d+)$/;
const CONTROL_PREFIX = "wsnotify.";
const TRUNCATED = "wsnotify.truncated";
const HELLO = "wsnotify.hello";
const RECENT_LIMIT = 1000;
const STABLE_MS = 5000;

function parseId(id) {
  const m = typeof id === "string" ? STREAM_ID.exec(id) : null;
  return m ? [BigInt(m[1]), BigInt(m[2])] : null;
}

/**
 * Compares two stream ids numerically, ms first, then seq.
 * @param {string} a
 * @param {string} b
 * @returns {number} -1, 0 or 1
 * @throws {TypeError} when either is not a stream id
 */
export function compareIds(a, b) {
  const x = parseId(a), y = parseId(b);
  if (!x || !y) throw new TypeError(`wsnotify: not a stream id: ${x ? b : a}`);
  const d = x[0] === y[0] ? x[1] - y[1] : x[0] - y[0];
  return d < 0n ? -1 : d > 0n ? 1 : 0;
}

/** The later of two ids, ignoring any that is not a stream id. */
function latest(a, b) {
  if (!parseId(a)) return parseId(b) ? b : undefined;
  return parseId(b) && compareIds(b, a) > 0 ? b : a;
}

function withSince(raw, since) {
  const u = new URL(String(raw), globalThis.location?.href);
  u.protocol = u.protocol.replace(/^http/, "ws");
  if (since === undefined) return u.href;
  const params = u.search.slice(1).split("&").filter((p) => p && !/^since(=|$)/.test(p));
  params.push("since=" + since);
  u.search = params.join("&");
  return u.href;
}

function storage() {
  try { return globalThis.localStorage ?? null; } catch { return null; }
}

/**
 * Opens a resumable notification connection. See the module comment for the
 * contract and wsnotify.d.ts for the types.
 * @param {string | (() => string | Promise<string>)} url
 * @param {import("./wsnotify.js").ConnectOptions} [options]
 * @returns {import("./wsnotify.js").Connection}
 */
export function connect(url, options = {}) {
  const {
    storageKey,
    minDelay = 250,
    maxDelay = 15000,
    WebSocket: Socket = globalThis.WebSocket,
    random = Math.random,
    setTimeout: schedule = (fn, ms) => globalThis.setTimeout(fn, ms),
    clearTimeout: unschedule = (t) => globalThis.clearTimeout(t),
  } = options;
  const listeners = new Map();
  const recent = new Set();
  let stored;
  if (storageKey) try { stored = storage()?.getItem(storageKey) ?? undefined; } catch { /* unavailable */ }
  let lastId = latest(options.lastId, stored);
  let state = "connecting", ws = null, attempt = 0, stopped = false;
  let retryTimer = null, stableTimer = null;

  function emit(event, arg) {
    for (const fn of [...(listeners.get(event) ?? [])]) {
      try { fn(arg); } catch (err) { event === "error" ? console.error(err) : report(err); }
    }
  }

  function report(err) {
    if (listeners.get("error")?.size) emit("error", err); else console.error(err);
  }

  function cancel(t) { if (t !== null) unschedule(t); }

  function retry() {
    const delay = Math.floor(random() * Math.min(maxDelay, minDelay * 2 ** attempt++));
    state = "connecting";
    retryTimer = schedule(open, delay);
    return delay;
  }

  async function open() {
    retryTimer = null;
    let sock;
    try {
      const raw = typeof url === "function" ? await url() : url;
      if (stopped) return;
      sock = ws = new Socket(withSince(raw, lastId));
    } catch (err) {
      if (stopped) return;
      report(err);
      retry();
      return;
    }
    sock.onopen = () => {
      if (sock !== ws) return;
      state = "open";
      stableTimer = schedule(() => { stableTimer = null; attempt = 0; }, STABLE_MS);
      emit("open");
    };
    sock.onmessage = (ev) => { if (sock === ws) receive(ev.data); };
    sock.onerror = (ev) => { if (sock === ws) emit("error", ev); };
    sock.onclose = (ev) => {
      if (sock !== ws) return;
      ws = null;
      cancel(stableTimer);
      stableTimer = null;
      const delay = retry();
      emit("close", { code: ev.code, reason: ev.reason, willReconnect: true, delay });
    };
  }

  function receive(text) {
    let env;
    try { env = JSON.parse(text); } catch (err) { report(err); return; }
    if (!env || typeof env.type !== "string") { report(new TypeError("wsnotify: frame is not an envelope")); return; }
    attempt = 0;
    if (env.type.startsWith(CONTROL_PREFIX)) {
      if (env.type === TRUNCATED) emit("truncated", { since: env.data?.since });
      // A socket closed before its first notification resumes from here.
      if (env.type === HELLO && lastId === undefined && parseId(env.data?.last_id)) remember(env.data.last_id);
      return;
    }
    if (accept(env.id)) emit("message", { id: env.id, type: env.type, data: env.data });
  }

  function remember(id) {
    lastId = id;
    if (storageKey) try { storage()?.setItem(storageKey, id); } catch { /* quota or privacy mode */ }
  }

  function accept(id) {
    if (parseId(id)) {
      if (lastId !== undefined && compareIds(id, lastId) <= 0) return false;
      remember(id);
      return true;
    }
    if (typeof id !== "string" || id === "") return true; // nothing to dedupe by
    if (recent.has(id)) return false;
    recent.add(id);
    if (recent.size > RECENT_LIMIT) recent.delete(recent.values().next().value);
    return true;
  }

  const conn = {
    on(event, fn) {
      if (!listeners.has(event)) listeners.set(event, new Set());
      listeners.get(event).add(fn);
      return () => conn.off(event, fn);
    },
    off(event, fn) { listeners.get(event)?.delete(fn); },
    get lastId() { return lastId; },
    get state() { return state; },
    close() {
      if (stopped) return;
      stopped = true;
      state = "closed";
      cancel(retryTimer);
      cancel(stableTimer);
      retryTimer = stableTimer = null;
      const sock = ws;
      ws = null;
      if (sock) {
        sock.onopen = sock.onmessage = sock.onerror = sock.onclose = null;
        try { sock.close(1000); } catch { /* already closing */ }
      }
    },
  };
  open();
  return conn;
}
