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
      socket = new WebSocket(url.toString());
      socket.onopen = () => {
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
        var delay = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** attempt++);
        timer = setTimeout(connect, delay / 2 + Math.random() * (delay / 2));
      };
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
