/*
 * turbocast client — optional, no build step. Served by turbo.middleware()
 * at <path>/client.js (default /turbo-streams/client.js).
 *
 * One connection per page. Every <turbo-stream-source> whose src points at
 * turbocast's path (the path this script is served under) becomes a
 * subscription on one shared connection instead of a connection of its own:
 *
 * - WebSocket sources (ws:/wss: src) share one WebSocket speaking the
 *   "turbocast.v1" subprotocol: each source is a `subscribe` with its own id,
 *   signed names and position; a source that leaves the page (Turbo Drive
 *   navigation, a frame, morphing) is an `unsubscribe`. Nothing reconnects
 *   for a navigation. Frames name the subscriptions they are for
 *   (data-turbocast-for) and their position (data-turbocast-position); each
 *   subscription resumes after its own last frame when the socket comes back
 *   (backoff 0.5 s doubling to 30 s, with jitter).
 * - SSE sources (the default) share one EventSource for the union of the
 *   page's sources (`s=<signed>~<position>` per name); a change of the set
 *   replaces it, each source resuming from its own position, and EventSource
 *   itself resumes the whole union with Last-Event-ID.
 *
 * Each frame is applied once, however many sources name its stream.
 * A source carries the `connected` attribute while its subscription is live.
 *
 * A refusal is final: a subscription refused (403) is not tried again and
 * the page is refreshed once (at most once a minute, so a page refused
 * again does not loop); 410 (expired signatures) refreshes too; 5xx is
 * transient and retried. A socket the server closed with 1003, 1008, 1009
 * or 4403 (access ended) is not reopened. A union EventSource the server
 * refuses is split into one EventSource per source, so one bad source
 * does not take the others down.
 *
 * One connection per browser (opt-in: `data-turbocast-share` on this script
 * tag): tabs elect a leader (Web Locks) that holds the connections for all
 * of them and relays frames over a BroadcastChannel; when the leader tab
 * closes, the next tab takes over and subscribes everything again from each
 * source's own position, so no frame is lost.
 *
 * A page still opens more than one connection when it has both SSE and
 * WebSocket sources (one each), when a union SSE URL would pass 8,000
 * characters (split by length), after a union refusal (one per source),
 * and for sources pointing elsewhere (left to Turbo, or, for ws: URLs, given
 * a reconnecting socket of their own).
 *
 * Load it before Turbo, as a classic script:
 *   <script src="/turbo-streams/client.js"></script>
 *   <script type="module" src="/turbo.js"></script>
 * Loaded after Turbo, it still applies to every element connected from then on.
 */
(() => {
  if (typeof window === "undefined" || window.__turbocastClient) return;
  window.__turbocastClient = true;

  var script = document.currentScript;
  var PATH = (() => {
    try {
      return new URL(script.src, window.location.href).pathname.replace(/\/client\.js$/, "");
    } catch (_) {
      return "/turbo-streams";
    }
  })();
  var SHARE = Boolean(script?.hasAttribute("data-turbocast-share"));
  var PROTOCOL = "turbocast.v1";
  var POSITION = /^\s*<turbo-stream\b[^>]*?\sdata-turbocast-position="([A-Za-z0-9._-]+)"/i;
  var FOR = /^\s*<turbo-stream\b[^>]*?\sdata-turbocast-for="([^"]*)"/i;
  var STREAM = /^\s*<turbo-stream\b[^>]*?\sdata-turbocast-stream="([^"]*)"/i;
  var MIN_DELAY_MS = 500;
  var MAX_DELAY_MS = 30000;
  var IDLE_CLOSE_MS = 3000;
  var MAX_URL = 8000;
  /* Close codes after which reconnecting cannot help (the server refused what this client did, or ended access). */
  var FINAL_CODES = { 1003: true, 1008: true, 1009: true, 4403: true };
  var REFUSED_REFRESH_MS = 60000;

  function backoff(attempt) {
    var delay = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** attempt);
    return delay / 2 + Math.random() * (delay / 2);
  }

  /* Whether position `a` is after `b` ("epoch.seq"; another epoch is newer: the server restarted its history). */
  function later(a, b) {
    if (!b) return true;
    if (!a) return false;
    var da = a.lastIndexOf(".");
    var db = b.lastIndexOf(".");
    if (a.slice(0, da) !== b.slice(0, db)) return true;
    return Number(a.slice(da + 1)) > Number(b.slice(db + 1));
  }

  function unescapeAttribute(value) {
    return value
      .replace(/&quot;/g, '"')
      .replace(/&#39;/g, "'")
      .replace(/&lt;/g, "<")
      .replace(/&gt;/g, ">")
      .replace(/&amp;/g, "&");
  }

  /* The stream name a signed token carries (base64url before the first dot): only to route frames among tabs. */
  function tokenName(token) {
    try {
      const b64 = token.slice(0, token.indexOf(".")).replace(/-/g, "+").replace(/_/g, "/");
      const bytes = Uint8Array.from(atob(b64 + "===".slice((b64.length + 3) % 4)), (c) => c.charCodeAt(0));
      return new TextDecoder().decode(bytes);
    } catch (_) {
      return "";
    }
  }

  /* Resolves true when the server refuses `wsUrl` for good: a HEAD of it answers 4xx (408 and 429 are transient). */
  function refusedForGood(wsUrl) {
    var httpUrl = wsUrl.replace(/^ws/i, "http");
    return fetch(httpUrl, { method: "HEAD", credentials: "same-origin", cache: "no-store" }).then(
      (response) =>
        response.status >= 400 && response.status < 500 && response.status !== 408 && response.status !== 429,
      () => false,
    );
  }

  /* Reloads the page into what the server now shows it, once: a page refused again within a minute stays as it is. */
  function refreshOnce() {
    var key = `turbocast:refused:${window.location.pathname}${window.location.search}`;
    var now = Date.now();
    var last = window.__turbocastRefused || 0;
    try {
      last = Math.max(last, Number(window.sessionStorage.getItem(key)) || 0);
      window.sessionStorage.setItem(key, String(now));
    } catch (_) {
      /* no storage (privacy mode): the window's own memory still stops a Turbo Drive loop */
    }
    if (now - last < REFUSED_REFRESH_MS) return;
    window.__turbocastRefused = now;
    if (window.Turbo?.visit) window.Turbo.visit(window.location.href, { action: "replace" });
    else window.location.reload();
  }

  /* ---- applying frames: once per page, through Turbo ---- */

  var waiting = [];
  function render(html) {
    if (window.Turbo?.renderStreamMessage) {
      window.Turbo.renderStreamMessage(html);
      return;
    }
    /* Turbo defines its elements a moment before it sets window.Turbo: keep the frames until it is there. */
    waiting.push(html);
    if (waiting.length === 1) {
      const flush = () => {
        if (!window.Turbo?.renderStreamMessage) return setTimeout(flush, 20);
        var frames = waiting;
        waiting = [];
        frames.forEach((frame) => {
          window.Turbo.renderStreamMessage(frame);
        });
      };
      queueMicrotask(flush);
    }
  }

  /* ---- this tab's sources ---- */

  var TAB = Math.random().toString(36).slice(2, 10);
  var counter = 0;
  /* element -> { id, gid, element, transport, tokens, names, position, state } */
  var byElement = new Map();
  var byGid = new Map();

  function isOurs(src) {
    var url;
    try {
      url = new URL(src, window.location.href);
    } catch (_) {
      return null;
    }
    if (url.pathname !== PATH || url.host !== window.location.host) return null;
    var tokens = url.searchParams.getAll("s").filter((token) => token && token.indexOf("~") === -1);
    if (tokens.length === 0) return null;
    return {
      transport: /^wss?:$/i.test(url.protocol) ? "websocket" : "sse",
      tokens: tokens,
      position: url.searchParams.get("after"),
      page: url.searchParams.get("p"),
    };
  }

  function addSource(element, parsed) {
    if (byElement.has(element)) {
      /* moved (a permanent element carried into the next page): the same subscription goes on */
      leaving.delete(element);
      return;
    }
    var id = String(++counter);
    var sub = {
      id: id,
      gid: SHARE ? `${TAB}:${id}` : id,
      element: element,
      transport: parsed.transport,
      tokens: parsed.tokens,
      names: parsed.tokens.map(tokenName),
      position: parsed.position,
      page: parsed.page,
      state: "pending",
    };
    byElement.set(element, sub);
    byGid.set(sub.gid, sub);
    changed();
  }

  var leaving = new Set();
  function removeSource(element) {
    if (!byElement.has(element)) return;
    leaving.add(element);
    changed();
  }

  function forget(element) {
    var sub = byElement.get(element);
    byElement.delete(element);
    byGid.delete(sub.gid);
    element.removeAttribute("connected");
  }

  /* Connects and disconnects of one DOM change (a Drive render: old sources out, new ones in) go out together. */
  var changeQueued = false;
  function changed() {
    if (changeQueued) return;
    changeQueued = true;
    queueMicrotask(() => {
      changeQueued = false;
      leaving.forEach((element) => {
        if (!element.isConnected) forget(element);
      });
      leaving.clear();
      announce();
    });
  }

  function descriptors() {
    var list = [];
    byGid.forEach((sub) => {
      if (sub.state !== "refused")
        list.push({
          gid: sub.gid,
          transport: sub.transport,
          tokens: sub.tokens,
          position: sub.position,
          page: sub.page,
          data: sub.data,
          sync: sub.sync,
          version: sub.version,
        });
    });
    return list;
  }

  /*
   * Which sources each frame was applied for (by position). A frame comes
   * again when two subscriptions replay it (both resumed after a cut, or a
   * frame's source naming a stream the page already holds): it is applied
   * again only when none of the sources it was applied for is still in the
   * page — the part of the page it went to is gone (a Drive visit replaced
   * the body), and the new one was rendered without it.
   */
  var appliedFor = new Map();
  var MAX_REMEMBERED = 2000;

  /* What the connection holder says about this tab's subscriptions. */
  function onFrame(message) {
    var mine = [];
    message.gids.forEach((gid) => {
      var sub = byGid.get(gid);
      if (sub) mine.push(sub);
    });
    mine.forEach((sub) => {
      if (message.position && later(message.position, sub.position)) sub.position = message.position;
    });
    /* a union EventSource marks the frame's stream: only sources naming it count */
    var stream = message.stream;
    var relevant = stream === undefined ? mine : mine.filter((sub) => sub.names.indexOf(stream) !== -1);
    if (relevant.length === 0) return;
    var position = message.position;
    /* a refresh (no stream) carries the newest position seen, likely a frame's already applied: never skipped */
    if (position && stream !== undefined) {
      const before = appliedFor.get(position);
      if (before?.some((sub) => byGid.get(sub.gid) === sub)) return;
      appliedFor.delete(position);
      appliedFor.set(position, relevant);
      if (appliedFor.size > MAX_REMEMBERED) appliedFor.delete(appliedFor.keys().next().value);
    }
    render(message.html);
  }

  /* A data event (or sync) for this tab's Turbocast.subscribe subscriptions. */
  function onData(message) {
    message.gids.forEach((gid) => {
      var sub = byGid.get(gid);
      if (!sub?.data) return;
      if (message.position) sub.position = message.position;
      /* the sync's version: a resume drops the events it already holds (later ones may come out of version order) */
      if (message.event.action === "sync") sub.version = message.event.version;
      var handler = message.event.action === "sync" ? sub.handlers.onSync : sub.handlers.onEvent;
      try {
        if (typeof handler === "function") handler(message.event);
      } catch (error) {
        if (window.console) console.error("turbocast: a data handler threw", error);
      }
    });
  }

  function onState(message) {
    var sub = byGid.get(message.gid);
    if (!sub) return;
    if (sub.data) {
      if (message.state === "live") sub.state = "live";
      else if (message.state === "down" && sub.state === "live") sub.state = "pending";
      else if (message.state === "refused") {
        /* a refused data subscription is not retried; the page stays as it is */
        sub.state = "refused";
        changed();
        if (window.console) console.warn(`turbocast: a data subscription was refused (${message.status})`);
      }
      return;
    }
    if (message.state === "live") {
      sub.state = "live";
      sub.element.setAttribute("connected", "");
    } else if (message.state === "down") {
      if (sub.state === "live") sub.state = "pending";
      sub.element.removeAttribute("connected");
    } else if (message.state === "refused") {
      sub.state = "refused";
      sub.element.removeAttribute("connected");
      /* the holder forgets it too (a leader tab would otherwise subscribe it again with the next change) */
      changed();
      if (message.status === 403 || message.status === 410) refreshOnce();
      else if (window.console) console.warn(`turbocast: a subscription was refused (${message.status})`);
    }
  }

  /* ---- the connections (held by this tab, or by the leader tab when shared) ---- */

  /* tab -> descriptors, for the tab holding the connections */
  var tabs = new Map();
  var holder = null;

  function Holder(emit) {
    var ws = WsChannel(emit);
    var sse = SseChannel(emit);
    var recomputeQueued = false;
    return {
      recompute() {
        if (recomputeQueued) return;
        recomputeQueued = true;
        queueMicrotask(() => {
          recomputeQueued = false;
          var wsList = [];
          var sseList = [];
          tabs.forEach((list) => {
            list.forEach((d) => {
              (d.transport === "websocket" ? wsList : sseList).push(d);
            });
          });
          ws.update(wsList);
          sse.update(sseList);
        });
      },
      reconnectNow() {
        ws.reconnectNow();
      },
    };
  }

  /*
   * One WebSocket for every WebSocket subscription. `emit` reports frames
   * ({ html, position, gids }) and subscription states ({ gid, state, status }).
   */
  function WsChannel(emit) {
    var subs = new Map(); /* gid -> { d, position, sent, retry } */
    var socket = null;
    var open = false;
    var attempt = 0;
    var timer = null;
    var idle = null;

    function url() {
      return `${window.location.protocol === "https:" ? "wss" : "ws"}://${window.location.host}${PATH}`;
    }
    function send(message) {
      if (open) socket.send(JSON.stringify(message));
    }
    function subscribe(entry) {
      entry.sent = true;
      var message = { type: "subscribe", id: entry.d.gid, streams: entry.d.tokens, after: entry.position || null };
      if (entry.d.data) {
        /* resumes after the last position it saw, dropping what its sync held; or starts with the set when it asks for one */
        message.data = true;
        if (entry.version !== null && entry.version !== undefined) message.version = entry.version;
        else if (entry.d.sync) message.sync = true;
      }
      /* the page that rendered the source: { toOthers: true } frames of its own requests skip it */
      if (entry.d.page) message.page = entry.d.page;
      send(message);
    }
    function connect() {
      timer = null;
      if (socket || subs.size === 0) return;
      var s = new WebSocket(url(), PROTOCOL);
      socket = s;
      s.onopen = () => {
        open = true;
        attempt = 0;
        subs.forEach(subscribe);
      };
      s.onmessage = (event) => {
        if (typeof event.data !== "string") return;
        if (event.data.charAt(0) === "{") {
          const message = JSON.parse(event.data);
          return message.type === "data" ? dataMessage(message) : answer(message);
        }
        var tags = FOR.exec(event.data);
        if (!tags) return;
        var position = POSITION.exec(event.data);
        var gids = unescapeAttribute(tags[1]).split(" ");
        var current = gids.filter((gid) => subs.has(gid) && !subs.get(gid).d.data);
        /* a refresh for a data subscription: events were lost, so it starts again from a sync */
        gids.forEach((gid) => {
          var entry = subs.get(gid);
          if (!entry?.d.data) return;
          entry.position = null;
          entry.version = null;
          send({ type: "unsubscribe", id: gid });
          subscribe(entry);
        });
        /* a frame for subscriptions this page has left (in flight when it unsubscribed) is not applied */
        if (current.length === 0) return;
        current.forEach((gid) => {
          var entry = subs.get(gid);
          if (position) entry.position = position[1];
        });
        var stream = STREAM.exec(event.data);
        emit({
          kind: "frame",
          html: event.data,
          position: position ? position[1] : null,
          gids: current,
          stream: stream ? unescapeAttribute(stream[1]) : undefined,
        });
      };
      s.onclose = (event) => {
        if (socket !== s) return;
        socket = null;
        open = false;
        subs.forEach((entry, gid) => {
          entry.sent = false;
          emit({ kind: "state", gid: gid, state: "down" });
        });
        if (FINAL_CODES[event.code] || subs.size === 0) return;
        timer = setTimeout(connect, backoff(attempt++));
      };
    }
    function dataMessage(message) {
      var gids = String(message.for || "")
        .split(" ")
        .filter((gid) => subs.has(gid));
      if (gids.length === 0 || !message.event) return;
      gids.forEach((gid) => {
        var entry = subs.get(gid);
        if (message.position) entry.position = message.position;
        if (message.event.action === "sync") entry.version = message.event.version;
      });
      emit({ kind: "data", event: message.event, position: message.position || null, gids: gids });
    }
    function answer(message) {
      var entry = subs.get(String(message.id));
      if (!entry) return;
      if (message.type === "subscribed") emit({ kind: "state", gid: entry.d.gid, state: "live" });
      else if (message.type === "refused" && message.status >= 500) {
        /* transient: the same subscription again, later */
        entry.sent = false;
        entry.retry = setTimeout(
          () => {
            entry.retry = null;
            if (subs.get(entry.d.gid) === entry && open) subscribe(entry);
          },
          backoff((entry.attempt = (entry.attempt || 0) + 1)),
        );
      } else if (message.type === "refused" || message.type === "error") {
        subs.delete(entry.d.gid);
        emit({ kind: "state", gid: entry.d.gid, state: "refused", status: message.status });
      }
    }
    function closeIdle() {
      idle = null;
      if (subs.size === 0 && socket) {
        const s = socket;
        socket = null;
        open = false;
        s.close();
      }
    }
    return {
      update(list) {
        var wanted = new Map();
        list.forEach((d) => {
          wanted.set(d.gid, d);
        });
        /* unsubscribes first: a stream the next page names again is then replayed for it */
        subs.forEach((entry, gid) => {
          if (wanted.has(gid)) return;
          if (entry.retry) clearTimeout(entry.retry);
          subs.delete(gid);
          if (entry.sent) send({ type: "unsubscribe", id: gid });
        });
        wanted.forEach((d, gid) => {
          if (subs.has(gid)) return;
          var entry = { d: d, position: d.position, version: d.version, sent: false, retry: null };
          subs.set(gid, entry);
          if (open) subscribe(entry);
        });
        if (subs.size > 0) {
          if (idle) clearTimeout(idle);
          idle = null;
          if (!socket && !timer) connect();
        } else if (socket && !idle) idle = setTimeout(closeIdle, IDLE_CLOSE_MS);
        else if (timer && subs.size === 0) {
          clearTimeout(timer);
          timer = null;
        }
      },
      reconnectNow() {
        if (socket || !timer) return;
        clearTimeout(timer);
        attempt = 0;
        connect();
      },
    };
  }

  /*
   * EventSources for every SSE subscription: one for their union, replaced
   * when the set changes. The union's events come in position order, so the
   * id of the last one is every subscription's position in it.
   */
  function SseChannel(emit) {
    var groups = []; /* { es, entries: [entry], lastId, single } */
    var entries = new Map(); /* gid -> { d, position, single } */

    function union(group) {
      var query = [];
      group.forEach((entry) => {
        entry.d.tokens.forEach((token) => {
          query.push(`s=${encodeURIComponent(entry.position ? `${token}~${entry.position}` : token)}`);
        });
      });
      /* one page per union: the first source's, which is the page id the page's requests send (X-Turbocast-Page) */
      var page = group.find((entry) => entry.d.page);
      if (page) query.push(`p=${encodeURIComponent(page.d.page)}`);
      return `${PATH}?${query.join("&")}`;
    }
    function take(group) {
      /* positions from the EventSource about to close: everything up to its last id was sent to all of it */
      if (!group.lastId) return;
      group.entries.forEach((entry) => {
        if (later(group.lastId, entry.position)) entry.position = group.lastId;
      });
    }
    function open(list) {
      var group = { es: null, entries: list, lastId: null };
      var es = new EventSource(union(list));
      group.es = es;
      es.onopen = () => {
        list.forEach((entry) => {
          emit({ kind: "state", gid: entry.d.gid, state: "live" });
        });
      };
      es.onmessage = (event) => {
        if (event.lastEventId) group.lastId = event.lastEventId;
        var stream = STREAM.exec(event.data);
        emit({
          kind: "frame",
          html: event.data,
          position: event.lastEventId || null,
          gids: list.map((entry) => entry.d.gid),
          stream: stream ? unescapeAttribute(stream[1]) : undefined,
        });
      };
      es.onerror = () => {
        list.forEach((entry) => {
          emit({ kind: "state", gid: entry.d.gid, state: "down" });
        });
        if (es.readyState !== EventSource.CLOSED) return;
        /* refused for good: alone, a source is refused; in a union, find which one by splitting it */
        take(group);
        groups = groups.filter((g) => g !== group);
        if (list.length === 1) {
          entries.delete(list[0].d.gid);
          emit({ kind: "state", gid: list[0].d.gid, state: "refused", status: 0 });
          return;
        }
        list.forEach((entry) => {
          entry.single = true;
          groups.push(open([entry]));
        });
      };
      return group;
    }
    return {
      update(list) {
        var wanted = new Map();
        list.forEach((d) => {
          wanted.set(d.gid, d);
        });
        var same = wanted.size === entries.size;
        entries.forEach((_entry, gid) => {
          if (!wanted.has(gid)) same = false;
        });
        if (same) return;
        groups.forEach((group) => {
          take(group);
          group.es.close();
        });
        groups = [];
        entries.forEach((_entry, gid) => {
          if (!wanted.has(gid)) entries.delete(gid);
        });
        wanted.forEach((d, gid) => {
          if (!entries.has(gid)) entries.set(gid, { d: d, position: d.position, single: false });
        });
        var batch = [];
        var length = PATH.length;
        entries.forEach((entry) => {
          if (entry.single) {
            groups.push(open([entry]));
            return;
          }
          var size = entry.d.tokens.reduce((n, token) => n + token.length + 40, 0);
          if (batch.length > 0 && length + size > MAX_URL) {
            groups.push(open(batch));
            batch = [];
            length = PATH.length;
          }
          batch.push(entry);
          length += size;
        });
        if (batch.length > 0) groups.push(open(batch));
      },
    };
  }

  /* ---- who holds the connections: this tab, or the leader of the browser's tabs ---- */

  var channel = null;
  function announce() {
    var list = descriptors();
    if (!SHARE) {
      tabs.set(TAB, list);
      holder ??= Holder(deliver);
      holder.recompute();
      return;
    }
    channel.postMessage({ kind: "subs", tab: TAB, subs: list });
    if (holder) {
      tabs.set(TAB, list);
      holder.recompute();
    }
  }

  /* A frame or state from the holder: to this tab, and (when shared and leading) to every other tab. */
  function deliver(message) {
    if (SHARE) channel.postMessage(message);
    if (message.kind === "frame") onFrame(message);
    else if (message.kind === "data") onData(message);
    else onState(message);
  }

  if (SHARE && typeof BroadcastChannel === "function" && navigator.locks) {
    channel = new BroadcastChannel(`turbocast:${PATH}`);
    channel.onmessage = (event) => {
      var message = event.data;
      if (message.kind === "frame") onFrame(message);
      else if (message.kind === "data") onData(message);
      else if (message.kind === "state") onState(message);
      else if (message.kind === "hello") announce();
      else if (holder && message.kind === "subs") {
        tabs.set(message.tab, message.subs);
        holder.recompute();
      } else if (holder && message.kind === "bye") {
        tabs.delete(message.tab);
        holder.recompute();
      }
    };
    window.addEventListener("pagehide", () => {
      channel.postMessage({ kind: "bye", tab: TAB });
    });
    /* The lock is held for the tab's life: when the leader closes, the next tab in line gets it. */
    navigator.locks.request(`turbocast:${PATH}`, () => {
      holder = Holder(deliver);
      tabs.set(TAB, descriptors());
      /* every tab says again what it holds, with its own positions; the subscriptions resume from them */
      channel.postMessage({ kind: "hello" });
      holder.recompute();
      return new Promise(() => {});
    });
  } else SHARE = false;

  /*
   * Data subscribers: Turbocast.subscribe(signedName, { onEvent, onSync })
   * subscribes to a stream's data events on the page's shared WebSocket
   * (`"data": true`). With onSync, the set comes first ({ action: "sync",
   * rows, version }), then every change after it ({ action, table, key,
   * data, version }); after a cut it resumes from the last position it saw
   * (with its sync's version, so nothing the sync held comes twice), and
   * after lost events (a refresh) it syncs again. Apply events as upserts
   * and deletes by key, in the order they come: each row's changes come in
   * order, though on PostgreSQL versions of different rows need not, and a
   * change the sync already holds may come once more after it.
   * Returns the function that unsubscribes.
   */
  window.Turbocast = {
    subscribe(signedName, handlers) {
      if (typeof signedName !== "string" || signedName === "")
        throw new TypeError("Turbocast.subscribe needs a signed stream name");
      var id = `data-${++counter}`;
      var sub = {
        id: id,
        gid: SHARE ? `${TAB}:${id}` : id,
        element: null,
        transport: "websocket",
        tokens: [signedName],
        names: [tokenName(signedName)],
        position: null,
        page: null,
        state: "pending",
        data: true,
        sync: typeof handlers?.onSync === "function",
        version: null,
        handlers: handlers || {},
      };
      byGid.set(sub.gid, sub);
      changed();
      return () => {
        if (byGid.get(sub.gid) !== sub) return;
        byGid.delete(sub.gid);
        changed();
      };
    },
  };

  /* A network that comes back should not wait out a long backoff. */
  window.addEventListener("online", () => {
    holder?.reconnectNow();
    live.forEach((source) => {
      source.reconnectNow();
    });
  });

  /* Follows a source whose src changes in place (morphing keeps the element). */
  if (typeof MutationObserver === "function") {
    new MutationObserver((records) => {
      records.forEach((record) => {
        var element = record.target;
        if (!byElement.has(element)) return;
        var parsed = isOurs(element.getAttribute("src") || "");
        var sub = byElement.get(element);
        if (parsed && parsed.tokens.join(" ") === sub.tokens.join(" ")) return;
        leaving.delete(element);
        forget(element);
        if (parsed) addSource(element, parsed);
        else changed();
      });
    }).observe(document, { subtree: true, attributes: true, attributeFilter: ["src"] });
  }

  /*
   * ---- sources pointing elsewhere over WebSocket: a reconnecting socket of their own, as before ----
   * A socket the server closed with 4403 (access ended; it sent a refresh frame first) is not reopened,
   * and when a reconnect's handshake fails — which a browser reports as close 1006, like a network
   * failure — the script asks the server with a HEAD of the subscription URL: a 4xx answer stops
   * reconnecting and refreshes the page once; no answer or a 5xx is transient and the backoff goes on.
   */

  /**
   * What Turbo's StreamObserver sees instead of a WebSocket: an EventTarget
   * that dispatches a "message" event per frame and survives reconnects,
   * resuming after the last data-turbocast-position it saw.
   */
  function ResumingSocket(src) {
    var target = new EventTarget();
    var url = new URL(src, window.location.href);
    var position = url.searchParams.get("after");
    var socket = null;
    var attempt = 0;
    var timer = null;
    var closed = false;

    function connect() {
      timer = null;
      if (closed) return;
      if (position) url.searchParams.set("after", position);
      var opened = false;
      socket = new WebSocket(url.toString());
      socket.onopen = () => {
        opened = true;
        attempt = 0;
        target.dispatchEvent(new Event("open"));
      };
      socket.onmessage = (event) => {
        if (typeof event.data !== "string") return;
        var match = POSITION.exec(event.data);
        if (match) position = match[1];
        target.dispatchEvent(new MessageEvent("message", { data: event.data }));
      };
      socket.onclose = (event) => {
        socket = null;
        if (closed || FINAL_CODES[event.code]) return;
        if (opened) return retry();
        // the handshake failed, and the browser does not say why: ask the server
        refusedForGood(url.toString()).then((final) => {
          if (closed) return;
          if (!final) return retry();
          closed = true;
          refreshOnce();
        });
      };
    }

    function retry() {
      timer = setTimeout(connect, backoff(attempt++));
    }

    target.close = () => {
      closed = true;
      if (timer) clearTimeout(timer);
      if (socket) socket.close();
    };
    target.reconnectNow = () => {
      if (closed || socket) return;
      if (timer) clearTimeout(timer);
      attempt = 0;
      connect();
    };
    connect();
    return target;
  }

  var live = new Set();

  /*
   * Turbo defines its elements (upgrading those already in the page) a moment
   * before it sets window.Turbo, in the same module evaluation: a microtask
   * later it is there.
   */
  function connectToTurbo(source) {
    if (window.Turbo) return window.Turbo.connectStreamSource(source);
    queueMicrotask(() => {
      if (!live.has(source)) return;
      if (window.Turbo) return window.Turbo.connectStreamSource(source);
      document.addEventListener(
        "turbo:load",
        () => {
          if (live.has(source) && window.Turbo) window.Turbo.connectStreamSource(source);
        },
        { once: true },
      );
    });
  }

  function patch(ElementClass) {
    var proto = ElementClass.prototype;
    if (proto.__turbocastPatched) return;
    proto.__turbocastPatched = true;
    var connected = proto.connectedCallback;
    var disconnected = proto.disconnectedCallback;
    proto.connectedCallback = function () {
      var src = this.getAttribute("src") || "";
      var parsed = isOurs(src);
      if (parsed) return addSource(this, parsed);
      if (!/^wss?:/i.test(src)) return connected.call(this);
      var source = ResumingSocket(src);
      this.streamSource = source;
      live.add(source);
      connectToTurbo(source);
    };
    proto.disconnectedCallback = function () {
      if (byElement.has(this)) return removeSource(this);
      if (this.streamSource) live.delete(this.streamSource);
      return disconnected.call(this);
    };
  }

  var existing = window.customElements.get("turbo-stream-source");
  var define = window.customElements.define;
  if (existing) {
    patch(existing);
  } else {
    /* Patch Turbo's class before it is defined, so elements already in the page are upgraded with the patch. */
    window.customElements.define = function (name, elementClass, options) {
      if (name === "turbo-stream-source") patch(elementClass);
      return define.call(this, name, elementClass, options);
    };
  }
})();

/*
 * toOthers: Turbo's own requests (form submissions, frame loads, visits) say
 * which page made them, so a broadcast `{ toOthers: true }` of the write they
 * make skips that page. The page's id is the p= parameter of its
 * <turbo-stream-source> URL (turbo.middleware() puts it there); it is sent in
 * the X-Turbocast-Page header. Requests made without this script (or with
 * plain fetch) carry no id: their toOthers broadcasts reach every page.
 */
(() => {
  if (typeof window === "undefined" || window.__turbocastPageId) return;
  window.__turbocastPageId = true;
  document.addEventListener("turbo:before-fetch-request", (event) => {
    var src = document.querySelector("turbo-stream-source[src*='p=']")?.getAttribute("src");
    var page = src ? new URL(src, window.location.href).searchParams.get("p") : null;
    var detail = event.detail || {};
    var headers = detail.fetchOptions?.headers;
    /* only to this app: a custom header on a cross-origin request would need a CORS preflight */
    var sameOrigin = !detail.url || new URL(detail.url, window.location.href).origin === window.location.origin;
    if (page && headers && sameOrigin) headers["X-Turbocast-Page"] = page;
  });
})();
