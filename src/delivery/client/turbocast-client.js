/*
 * turbocast client — optional, no build step. Served by turbo.middleware()
 * at <path>/client.js (default /turbo-streams/client.js).
 *
 * Turbo's standard <turbo-stream-source> opens one WebSocket for a ws:/wss:
 * src and never reopens it. With this script loaded, such an element keeps
 * its subscription: when the socket closes it reconnects with exponential
 * backoff (0.5 s doubling to 30 s, with jitter) and resumes after the last
 * frame it received, which the server marks on every WebSocket frame with a
 * data-turbocast-position attribute — so nothing is missed and nothing is
 * applied twice. SSE sources need none of this: EventSource reconnects and
 * resumes with Last-Event-ID by itself.
 *
 * A refusal is final: a socket the server closed with 4403 (access ended;
 * it sent a refresh frame first) is not reopened, and when a reconnect's
 * handshake fails — which a browser reports as close 1006, like a network
 * failure — the script asks the server with a HEAD of the subscription URL:
 * a 4xx answer (403: signature, user or stream no longer allowed) stops
 * reconnecting and refreshes the page once (at most once a minute per page,
 * so a page that is refused again does not loop); no answer or a 5xx is
 * transient and the backoff goes on.
 *
 * Load it before Turbo, as a classic script:
 *   <script src="/turbo-streams/client.js"></script>
 *   <script type="module" src="/turbo.js"></script>
 * Loaded after Turbo, it still applies to every element connected from then on.
 */
(() => {
  if (typeof window === "undefined" || window.__turbocastClient) return;
  window.__turbocastClient = true;

  var POSITION = /^\s*<turbo-stream\b[^>]*?\sdata-turbocast-position="([A-Za-z0-9._-]+)"/i;
  var MIN_DELAY_MS = 500;
  var MAX_DELAY_MS = 30000;
  /* Close codes after which reconnecting cannot help (the server refused what this client did). */
  var FINAL_CODES = { 1003: true, 1008: true, 1009: true };

  /* ---- final refusal (live authorization) ---- */
  /* The server closed the subscription because access ended, after sending a refresh frame (CloseCode.ACCESS_ENDED). */
  var ACCESS_ENDED = 4403;
  var REFUSED_REFRESH_MS = 60000;

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
  /* ---- end of final refusal ---- */

  /**
   * What Turbo's StreamObserver sees instead of a WebSocket: an EventTarget
   * that dispatches a "message" event per frame and survives reconnects.
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
        if (closed || FINAL_CODES[event.code] || event.code === ACCESS_ENDED) return;
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
      var delay = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** attempt++);
      timer = setTimeout(connect, delay / 2 + Math.random() * (delay / 2));
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
    target.position = () => position;
    connect();
    return target;
  }

  var live = new Set();
  /* A network that comes back should not wait out a long backoff. */
  window.addEventListener("online", () => {
    live.forEach((source) => {
      source.reconnectNow();
    });
  });

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
      if (!/^wss?:/i.test(src)) return connected.call(this);
      var source = ResumingSocket(src);
      this.streamSource = source;
      live.add(source);
      connectToTurbo(source);
    };
    proto.disconnectedCallback = function () {
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
