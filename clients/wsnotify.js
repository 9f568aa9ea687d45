// wsnotify client: one logical connection to a wsnotify server over WebSocket, SSE or
// long-polling, that resumes each stream from its position, never hands the app a
// duplicate or an out-of-order message, reconnects, and refreshes its token.
// No dependencies, no build step. API and events: docs/CLIENT.md. Wire: docs/PROTOCOL.md.

export const PROTOCOL_VERSION = 1;

const g = globalThis;
const ROOM = /^[A-Za-z0-9_.:@-]{1,128}$/;
// Closes that say the client or its credentials are at fault: retrying soon would only
// be refused again, so they wait at least 30 s.
const HARD = [1002, 1003, 1007, 1008, 1009];
const DELIVERY = ["chat.delivery", "notification", "broadcast"];
const PRESENCE = ["room.joined", "room.left", "presence.join", "presence.leave"];
const NEEDS = { websocket: "WebSocket", sse: "EventSource", poll: "fetch" };
// A transport that dies this soon after opening was probably cut by a proxy.
const QUICK = 5e3;
// An attempt not open by then is given up (a proxy holding the upgrade, a dead route).
const OPEN_TIMEOUT = 20e3;

/** `since` for a list of {stream, epoch, offset}. The stream is percent-encoded, "~"
 * included (encodeURIComponent leaves it), since a user id may contain "," or "~". */
export const encodeSince = (list) =>
  list.map((p) => encodeURIComponent(p.stream).replace(/~/g, "%7E") + "~" + p.epoch + "~" + p.offset).join(",");

/** The inverse of encodeSince; throws on a malformed value. */
export const parseSince = (since) =>
  since
    ? since.split(",").map((part) => {
        const m = /^(.+)~([0-9a-z]{0,32})~(\d{1,20})$/.exec(part);
        if (!m) throw new SyntaxError("wsnotify: invalid since " + part);
        return { stream: decodeURIComponent(m[1]), epoch: m[2], offset: +m[3] };
      })
    : [];

/** Full jitter: a delay drawn in [0, min(max, min * 2^attempt)). */
export const backoff = (attempt, min, max) => Math.random() * Math.min(max, min * 2 ** attempt);

/** The claims of a JWT (not verified: only `exp` and `sub` are read, to plan a refresh). */
export function claims(token) {
  try {
    const b = atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"));
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(b, (c) => c.charCodeAt(0)))) || {};
  } catch {
    return {};
  }
}

// A stream position we can resume from (history off: deliveries carry none).
const tracked = (x) => typeof x.stream == "string" && typeof x.epoch == "string" && Number.isInteger(x.offset);
const hardDelay = (o) => Math.max(30e3, o.maxBackoff) * (1 + Math.random());

export class Client {
  constructor(options = {}) {
    const o = (this.o = {
      url: g.location?.origin,
      transports: ["websocket", "sse", "poll"],
      pingTimeout: 60e3,
      minBackoff: 500,
      maxBackoff: 30e3,
      stableAfter: 10e3,
      failuresBeforeFallback: 2,
      probeInterval: 30e3,
      WebSocket: g.WebSocket,
      EventSource: g.EventSource,
      fetch: g.fetch,
    });
    for (const k in options) if (options[k] !== undefined) o[k] = options[k];
    if (!o.url) throw new TypeError("wsnotify: no url");
    o.url = String(o.url).replace(/\/+$/, "");
    this._list = o.transports.filter((k) => o[NEEDS[k]]);
    if (!this._list.length) throw new TypeError("wsnotify: no transport available");
    this._h = {};
    this._pos = new Map();
    const since = typeof o.since == "string" ? parseSince(o.since) : Object.entries(o.since || {}).map(([stream, p]) => ({ stream, ...p }));
    for (const p of since) this._pos.set(p.stream, { epoch: p.epoch, offset: p.offset });
    this.rooms = new Set();
    for (const r of o.rooms || []) this.subscribe(r);
    this.token = o.token;
    this.state = "closed";
    this.transport = this._list[0];
    this._k = this._n = this._fails = 0; // transport index, backoff attempt, failed upgrades
    // Back online, tab shown, page restored from the back-forward cache: retry now rather
    // than at the end of the backoff. Timers sleep in background tabs, so a connection
    // silent for longer than pingTimeout is presumed dead.
    this._wake = () => {
      const t = this._t;
      if (!this._run || g.document?.hidden) return;
      if (!t) this._refused || this._go(0);
      else if (t.watch && o.pingTimeout && Date.now() - t.last > o.pingTimeout) this._lost(t, 4000);
    };
    // Offline: the connection cannot work; end it now instead of after pingTimeout.
    this._offline = () => this._t && this._lost(this._t, 4000);
  }

  connect() {
    if (!this._run) {
      this._run = true;
      this._listen("addEventListener");
      if (this.token) this._setToken(this.token);
      this._go(0);
    }
    return this;
  }

  close() {
    this._run = false;
    for (const id of [this._timer, this._st, this._pt, this._rt]) clearTimeout(id);
    this._t?.end();
    this._p?.end();
    this._t = this._p = null;
    this._listen("removeEventListener");
    this._set("closed");
    return this;
  }

  subscribe(room) {
    if (!ROOM.test(room)) throw new TypeError("wsnotify: invalid room name " + JSON.stringify(room));
    if (!this.rooms.has(room)) this.rooms.add(room), this._rooms(room, 1);
    return this;
  }

  unsubscribe(room) {
    // A clean leave: a later subscribe starts live, not with what was said meanwhile.
    if (this.rooms.delete(room)) this._pos.delete("room:" + room), this._rooms(room, 0);
    return this;
  }

  /** Say `text` in `room`; false unless a WebSocket is open (SSE and poll only receive). */
  send(room, text) {
    return !!this._t?.send?.({ type: "chat.message", room, text });
  }

  positions() {
    const out = {};
    for (const [s, p] of this._pos) out[s] = { epoch: p.epoch, offset: p.offset };
    return out;
  }

  on(event, fn) {
    (this._h[event] ||= new Set()).add(fn);
    return this;
  }

  off(event, fn) {
    this._h[event]?.delete(fn);
    return this;
  }

  _emit(event, data) {
    for (const fn of this._h[event] || [])
      try {
        fn(data);
      } catch (e) {
        setTimeout(() => { throw e; }); // reported, but the other handlers still run
      }
  }

  _set(state, extra) {
    const transport = this._t?.kind || this._list[this._k];
    if (extra || state != this.state || transport != this.transport) {
      this.state = state;
      this.transport = transport;
      this._emit("state", { state, transport, ...extra });
    }
  }

  _listen(method) {
    for (const [target, name, fn] of [
      [g, "online", this._wake],
      [g, "pageshow", this._wake],
      [g.document, "visibilitychange", this._wake],
      [g, "offline", this._offline],
    ])
      target?.[method]?.(name, fn); // absent outside browsers
  }

  // Who the server takes us for: the token's sub, the `user` option, or the id an open
  // server gave us on first contact (kept, so that a reconnect resumes the same inbox).
  _me() {
    return this.token ? this._sub : this.o.user ?? this._anon;
  }

  _adopt(stream) {
    if (stream.startsWith("user:") && this._me() == null) this._anon = stream.slice(5);
  }

  // The since of the user's stream, broadcast and `rooms` (only the rooms if `only`),
  // recorded on the transport as asked for (see _position).
  _since(t, rooms, only) {
    const me = this._me(), list = [];
    const names = [...(only ? [] : me == null ? ["broadcast"] : ["user:" + me, "broadcast"]), ...rooms.map((r) => "room:" + r)];
    for (const stream of names) {
      const p = this._pos.get(stream);
      if (p) list.push({ stream, ...p }), t.asked.add(stream);
    }
    return encodeSince(list);
  }

  // Query string; room names go raw (their characters are all safe, and "," separates them).
  _query(q, withToken) {
    if (!this.token) q.user = this._me();
    else if (withToken) q.token = this.token; // EventSource cannot send headers
    let s = "";
    for (const k in q) if (q[k] != null && q[k] !== "") s += (s ? "&" : "?") + k + "=" + (k == "rooms" ? q[k] : encodeURIComponent(q[k]));
    return s;
  }

  _get(path, q, signal) {
    const f = this.o.fetch; // unbound: window.fetch refuses another `this`
    return f(this.o.url + path + this._query(q), { signal, headers: this.token ? { authorization: "Bearer " + this.token } : {} });
  }

  // A browser cannot see why an upgrade (or an EventSource) failed: it is a bare 1006.
  // The same question over fetch can: 401, 403, 400, 503, or 200 when only the upgrade
  // itself is blocked. [0] when the server cannot be reached at all.
  async _check() {
    try {
      const r = await this._get("/poll", { rooms: [...this.rooms].join(","), wait: 0 }, g.AbortSignal?.timeout?.(5e3));
      return [r.status, await r.json().catch(() => null)];
    } catch {
      return [0];
    }
  }

  async _auth() {
    try {
      this._setToken(await this.o.getToken());
      return true;
    } catch (e) {
      this._emit("error", { code: "token", message: String(e?.message || e) });
    }
  }

  // Plan the token's refresh some seconds before `exp` (30 s, or half its remaining life
  // if shorter), then move to a connection made with the new one.
  _setToken(token) {
    const c = claims((this.token = token)), left = c.exp * 1e3 - Date.now();
    this._sub = c.sub;
    clearTimeout(this._rt);
    if (this.o.getToken && left > 0)
      this._rt = setTimeout(
        async () => this._run && (await this._auth()) && this._t?.kind != "poll" && this._swap(),
        Math.min(2 ** 31 - 1, Math.max(1e3, left - Math.min(30e3, left / 2))),
      );
  }

  _go(delay) {
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._start(), delay);
  }

  async _start() {
    if (!this._run || this._t) return;
    // A getToken that throws means "not now" (logged out, offline): ask again later.
    if (this.o.getToken && !this.token && !(await this._auth())) return this._run && this._go(this._backoff());
    if (!this._run || this._t) return;
    this._t = this._open(this._list[this._k]);
    this._set("connecting");
  }

  // One attempt on one transport. Its callbacks do nothing once it has ended, so a late
  // event of an old socket cannot disturb the current one.
  _open(kind) {
    const t = { kind, asked: new Set(), told: {} };
    t.beat = () => {
      t.last = Date.now();
      clearTimeout(t.wd);
      if (t.watch && this.o.pingTimeout) t.wd = setTimeout(() => this._lost(t, 4000), this.o.pingTimeout);
    };
    t.on = (m) => t.dead || this._frame(t, m);
    t.ok = () => t.dead || t.up || this._up(t);
    t.down = (code, status, body) => this._lost(t, code, status, body);
    t.end = () => {
      t.dead = 1;
      for (const id of [t.wd, t.sd, t.pq]) clearTimeout(id);
      t.close?.();
    };
    t.wd = setTimeout(() => this._lost(t, 1006), OPEN_TIMEOUT);
    try {
      this["_" + kind](t);
    } catch (e) {
      this._emit("error", { code: "transport", message: String(e?.message || e) });
      setTimeout(() => t.down(1002));
    }
    return t;
  }

  _up(t) {
    t.up = 1;
    t.upAt = Date.now();
    t.beat();
    if (t == this._t) return this._live(t);
    // A same-kind replacement takes over once open; a probe of a preferred transport
    // must first outlive QUICK, or a proxy that kills it would make us flap.
    if (t == this._p) t.pq = setTimeout(() => this._promote(t), t.kind == this._t?.kind ? 0 : QUICK);
  }

  _promote(t) {
    const old = this._t;
    this._t = t;
    this._p = null;
    old?.end();
    this._live(t);
  }

  _live(t) {
    this._k = this._list.indexOf(t.kind);
    this._refused = 0;
    this._set("connected");
    clearTimeout(this._st);
    this._st = setTimeout(() => (this._n = this._fails = 0), this.o.stableAfter);
    if (this._k) this._probeLater();
  }

  // While on a fallback, try the preferred transport now and then, jittered so that a
  // fleet of clients does not probe in step.
  _probeLater() {
    clearTimeout(this._pt);
    this._pt = setTimeout(
      () => this._k && this._t?.up && !this._p && (this._p = this._open(this._list[0])),
      this.o.probeInterval * (0.5 + Math.random()),
    );
  }

  // Make-before-break: a new transport of the same kind (new token, new rooms, server
  // draining) while the old one serves until it is open. Positions make the overlap safe.
  _swap() {
    const t = this._t;
    if (!t) return;
    this._p?.end();
    if (t.up) return (this._p = this._open(t.kind));
    t.end();
    this._t = this._p = null;
    this._start();
  }

  _rooms(room, join) {
    const t = this._t;
    if (t?.room) t.room(room, join), this._p?.room?.(room, join);
    else if (t) this._swap(); // SSE and poll name their rooms in the URL
  }

  // A transport ended: decide how long to wait, and on which transport to retry.
  async _lost(t, code, status, body) {
    if (t.dead) return;
    t.end();
    if (t == this._p) {
      // A replacement or a probe failed: the current transport goes on serving.
      this._p = null;
      return t.kind == this._t?.kind ? setTimeout(() => this._swap(), this._backoff()) : this._probeLater();
    }
    if (t != this._t) return;
    clearTimeout(this._st);
    const p = (this._t = this._p);
    this._p = null;
    if (p) return p.up ? (clearTimeout(p.pq), this._live(p)) : this._set("connecting");
    if (!this._run) return;
    if (!t.up && status == null && this.o.fetch) [status, body] = await this._check();
    const o = this.o, n = this._n;
    let delay = this._backoff(), hard = HARD.includes(code);
    if (hard) this._emit("error", { code: "closed", close: code, message: body?.error || "closed with " + code });
    if (status >= 400 && status < 500) {
      // Refused: a fresh token may cure a 401; nothing else cures itself.
      if (!(status == 401 && o.getToken && (await this._auth()))) {
        hard = 1;
        this._emit("error", { code: body?.code || (status == 401 ? "unauthorized" : "refused"), status, message: body?.error || "HTTP " + status });
      }
    } else if ((status >= 200 && status < 300) || (code == 1006 && t.up && Date.now() - t.upAt < QUICK)) {
      // The server answers plain HTTP, but this transport does not get through.
      if (++this._fails >= o.failuresBeforeFallback && this._k < this._list.length - 1) this._k++, (this._fails = 0), (delay = 0);
    }
    if (code == 4010 && !n) delay = 0; // insufficient state: resume at once (once; then back off)
    else if (t.hint != null) delay = t.hint; // a draining server spreads its clients' returns
    if ((this._refused = hard)) delay = hardDelay(o);
    if (!this._run || this._t) return;
    this._set("disconnected", { delay, code });
    this._go(delay);
  }

  _backoff() {
    return backoff(this._n++, this.o.minBackoff, this.o.maxBackoff);
  }

  _frame(t, m) {
    t.beat();
    const type = m.type;
    if (type == "stream.position") this._position(t, m);
    else if (PRESENCE.includes(type)) this._emit("presence", m);
    else if (type == "system.error") this._emit("error", m);
    else if (type == "system.shutdown") {
      // Leave by ourselves after the server's per-client delay, so that a fleet drains
      // in a spread instead of all at once when the server finally closes with 1001.
      if (m.reconnect_after_ms >= 0) t.sd = setTimeout(() => t == this._t && this._swap(), (t.hint = m.reconnect_after_ms));
    } else if (DELIVERY.includes(type) || typeof m.stream == "string") this._deliver(t, m);
    // anything else (pings, pongs, raw payloads of other programs) is not for the app
  }

  // Each delivery once and in order: a known stream continues at last+1; an older offset
  // is a duplicate (a replay overlapping what we had, two transports during a swap);
  // anything else is a gap that only a resume can fill.
  _deliver(t, m) {
    const s = m.stream;
    if (typeof s == "string" && s.startsWith("room:") && !this.rooms.has(s.slice(5))) return; // left
    if (tracked(m)) {
      const p = this._pos.get(s);
      this._adopt(s);
      if (p && !p.loose) {
        if (m.epoch == p.epoch && m.offset <= p.offset) return;
        if (m.epoch != p.epoch || m.offset != p.offset + 1) return this._lost(t, 4010);
      }
      this._pos.set(s, { epoch: m.epoch, offset: m.offset });
    }
    this._emit("message", m);
  }

  // Where a stream starts on this transport (stream.position, an SSE position or reset, a
  // /poll `streams` entry; `offset` is where live messages follow). recovered:true: our
  // position stands and the replay follows. recovered:false: the app must refetch; with
  // `loose` the next message of the stream is taken as the new start. Not after
  // `unavailable`: it echoes our own position, which stands; a gap after it means
  // reconnect and resume (the server closes with 4010 itself).
  _position(t, e, loose) {
    if (!tracked(e)) return;
    const s = e.stream, p = this._pos.get(s);
    let r = e.recovered;
    this._adopt(s);
    // We asked to resume it, yet it starts afresh past our position: what lies between is lost.
    if (r == null && p && !p.loose && t.asked.has(s) && (p.epoch != e.epoch || p.offset < e.offset))
      e = { ...e, recovered: (r = false), reason: "not_resumed" };
    if (t.told[s] !== (r ?? true)) {
      t.told[s] = r ?? true;
      if (r != null) this._emit("recovered", { ...e, transport: t.kind });
    }
    if (r) p && (p.loose = 0);
    else if (r === false || !p || p.loose)
      this._pos.set(s, { epoch: e.epoch, offset: e.offset, loose: r === false && loose && e.reason != "unavailable" });
  }

  _websocket(t) {
    const o = this.o, first = [...this.rooms][0];
    const url = o.url.replace(/^http/, "ws") + (first ? "/ws/rooms/" + first : "/ws/notifications") + this._query({ since: this._since(t, first ? [first] : []) });
    const ws = this.token ? new o.WebSocket(url, ["bearer", this.token]) : new o.WebSocket(url);
    t.send = (m) => ws.readyState == 1 && (ws.send(JSON.stringify(m)), true);
    t.room = (room, join) => t.send(join ? { type: "room.join", room, since: this._since(t, [room], 1) || undefined } : { type: "room.leave", room });
    ws.onopen = () => {
      t.watch = 1; // the server sends system.ping every HEARTBEAT_INTERVAL
      // The URL names one room; the others (also those subscribed meanwhile) join now.
      for (const r of this.rooms) if (r != first) t.room(r, 1);
      if (first && !this.rooms.has(first)) t.room(first, 0);
      t.ok();
    };
    ws.onmessage = (e) => {
      let m;
      try {
        m = JSON.parse(e.data);
      } catch {}
      if (m && typeof m == "object") t.on(m);
    };
    // An error always means an abnormal end (1006), and some runtimes (Node 20's
    // WebSocket) fire no close event after a refused upgrade. Never unset: Node's `ws`
    // throws on an error nobody listens to.
    ws.onerror = () => t.down(1006);
    ws.onclose = (e) => t.down(e.code, null, e.reason && { error: e.reason });
    t.close = () => {
      ws.onclose = ws.onmessage = null;
      ws.close(1000);
    };
  }

  _sse(t) {
    const rooms = [...this.rooms];
    const es = new this.o.EventSource(this.o.url + "/sse" + this._query({ since: this._since(t, rooms), rooms: rooms.join(",") }, 1));
    const on = (name, fn) =>
      es.addEventListener(name, (e) => {
        let d;
        try {
          d = JSON.parse(e.data);
        } catch {}
        if (d && typeof d == "object") t.dead || (t.beat(), fn(d));
      });
    // Reconnects are ours (one backoff policy, since from our own positions), not the
    // browser's: an error ends this EventSource.
    es.onopen = t.ok;
    es.onerror = () => t.down(1006);
    on("message", t.on);
    on("shutdown", t.on);
    on("position", (d) => d.streams?.forEach((e) => this._position(t, e)));
    on("reset", (d) => this._position(t, { ...d, recovered: false }));
    // A `: ping` comment is invisible to EventSource; a named ping event arms the watchdog.
    es.addEventListener("ping", () => ((t.watch = 1), t.beat()));
    t.close = () => es.close();
  }

  _poll(t) {
    const ac = new AbortController();
    t.close = () => ac.abort();
    (async () => {
      // The first request answers at once (wait=0): "connected" must not wait for a message.
      for (let wait = 0; !t.dead; wait = 25) {
        const rooms = [...this.rooms], t0 = Date.now(), timer = setTimeout(() => ac.abort(), wait * 1e3 + 15e3);
        let r, b;
        try {
          r = await this._get("/poll", { since: this._since(t, rooms), rooms: rooms.join(","), wait }, ac.signal);
          b = await r.json();
        } catch {}
        clearTimeout(timer);
        if (t.dead) return;
        if (!r?.ok || !b) return t.down(0, r ? r.status : 0, b);
        t.ok();
        t.beat();
        this._batch(t, b);
        // An empty answer that came back at once (a reset, history off): do not spin.
        if (wait && !b.messages?.length && Date.now() - t0 < 1e3) await new Promise((f) => setTimeout(f, 1e3));
      }
    })();
  }

  // A /poll answer. Its `streams` give the positions after its messages, so resets are
  // applied (loosely) before the messages and everything else after them.
  _batch(t, b) {
    const streams = b.streams || [];
    for (const e of streams) if (e.recovered === false) this._position(t, e, 1);
    for (const m of b.messages || []) t.dead || this._frame(t, m);
    for (const e of streams) t.dead || e.reason == "unavailable" || this._position(t, e.recovered === false ? { ...e, recovered: null } : e);
  }
}

export default Client;
