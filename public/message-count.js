/*
 * The live message count on a room's page: the room's data events, not its
 * HTML (what a Stimulus controller would do with Turbocast.subscribe). The
 * sync gives the messages' keys, each event adds or removes one.
 */
(() => {
  var held = new Map(); /* element -> unsubscribe */

  function render(element, ids) {
    element.textContent = `${ids.size} message${ids.size === 1 ? "" : "s"}`;
  }

  function start() {
    if (!window.Turbocast) return;
    held.forEach((unsubscribe, element) => {
      if (element.isConnected) return;
      unsubscribe();
      held.delete(element);
    });
    document.querySelectorAll("[data-message-count]").forEach((element) => {
      if (held.has(element)) return;
      var ids = new Set();
      held.set(
        element,
        window.Turbocast.subscribe(element.getAttribute("data-message-count"), {
          onSync(sync) {
            ids = new Set(sync.rows.map((row) => row.id));
            render(element, ids);
          },
          onEvent(event) {
            if (event.action === "deleted") ids.delete(event.key);
            else ids.add(event.key);
            render(element, ids);
          },
        }),
      );
    });
  }

  document.addEventListener("turbo:load", start);
  document.addEventListener("DOMContentLoaded", start);
})();
