// @vitest-environment happy-dom
import { beforeAll, beforeEach, describe, expect, it } from "vitest";
import { buildFrame } from "../src/frames/frame.js";

// Turbo's own StreamElement applies the frames, so the markup is checked
// against what @hotwired/turbo 8 really parses, not against our idea of it.
type TurboModule = { renderStreamMessage(html: string): void; StreamActions: Record<string, (this: Element) => void> };
let Turbo: TurboModule;

beforeAll(async () => {
  Turbo = await import("@hotwired/turbo");
});

beforeEach(() => {
  document.body.innerHTML = `
    <ul id="messages"><li id="message_1">one</li><li id="message_2" class="item">two</li></ul>
    <p id="status">idle</p>`;
});

/** Applies a frame with Turbo and waits for the element to finish (Turbo renders on the next repaint). */
async function apply(frame: string): Promise<void> {
  Turbo.renderStreamMessage(frame);
  const deadline = Date.now() + 2000;
  while (document.querySelector("turbo-stream")) {
    if (Date.now() > deadline) throw new Error("Turbo did not apply the frame");
    await new Promise((r) => setTimeout(r, 5));
  }
}

const ids = () => [...document.querySelectorAll("#messages > li")].map((li) => li.id);

describe("Turbo applies every action's frame", () => {
  it("append adds to the end of the target", async () => {
    await apply(buildFrame({ action: "append", target: "messages", html: '<li id="message_3">three</li>' }));
    expect(ids()).toEqual(["message_1", "message_2", "message_3"]);
  });

  it("prepend adds to the start of the target", async () => {
    await apply(buildFrame({ action: "prepend", target: "messages", html: '<li id="message_0">zero</li>' }));
    expect(ids()).toEqual(["message_0", "message_1", "message_2"]);
  });

  it("replace swaps the target element itself", async () => {
    await apply(buildFrame({ action: "replace", target: "message_1", html: '<li id="message_1">edited</li>' }));
    expect(document.getElementById("message_1")!.textContent).toBe("edited");
    expect(ids()).toEqual(["message_1", "message_2"]);
  });

  it("replace with method morph keeps the element and updates its content", async () => {
    const before = document.getElementById("message_1");
    await apply(
      buildFrame({ action: "replace", target: "message_1", method: "morph", html: '<li id="message_1">morphed</li>' }),
    );
    expect(document.getElementById("message_1")!.textContent).toBe("morphed");
    expect(document.getElementById("message_1")).toBe(before);
  });

  it("update replaces the target's content", async () => {
    await apply(buildFrame({ action: "update", target: "status", html: "<b>busy</b>" }));
    expect(document.getElementById("status")!.innerHTML).toBe("<b>busy</b>");
  });

  it("update with method morph morphs the content", async () => {
    await apply(buildFrame({ action: "update", target: "status", method: "morph", html: "<i>morphed</i>" }));
    expect(document.getElementById("status")!.innerHTML).toBe("<i>morphed</i>");
  });

  it("remove deletes the target", async () => {
    await apply(buildFrame({ action: "remove", target: "message_1" }));
    expect(ids()).toEqual(["message_2"]);
  });

  it("remove with targets deletes every element the selector matches", async () => {
    await apply(buildFrame({ action: "remove", targets: "#messages > li" }));
    expect(ids()).toEqual([]);
  });

  it("before inserts ahead of the target", async () => {
    await apply(buildFrame({ action: "before", target: "message_2", html: '<li id="message_15">1.5</li>' }));
    expect(ids()).toEqual(["message_1", "message_15", "message_2"]);
  });

  it("after inserts behind the target", async () => {
    await apply(buildFrame({ action: "after", target: "message_1", html: '<li id="message_15">1.5</li>' }));
    expect(ids()).toEqual(["message_1", "message_15", "message_2"]);
  });

  it("append with targets applies to every match", async () => {
    await apply(buildFrame({ action: "append", targets: "li.item", html: "<em>!</em>" }));
    expect(document.getElementById("message_2")!.innerHTML).toBe("two<em>!</em>");
  });

  it("refresh is parsed as Turbo's refresh action (with its request-id)", async () => {
    const seen: string[] = [];
    const original = Turbo.StreamActions.refresh!;
    Turbo.StreamActions.refresh = function (this: Element) {
      seen.push(this.getAttribute("request-id") ?? "");
    };
    try {
      await apply(buildFrame({ action: "refresh", requestId: "req-1" }));
    } finally {
      Turbo.StreamActions.refresh = original;
    }
    expect(seen).toEqual(["req-1"]);
  });

  it("a custom action reaches the function registered in StreamActions", async () => {
    const seen: Array<{ target: string | null; html: string; level: string | null }> = [];
    Turbo.StreamActions.notify = function (this: Element) {
      const template = this.querySelector("template") as HTMLTemplateElement | null;
      seen.push({
        target: this.getAttribute("target"),
        html: template?.innerHTML ?? "",
        level: this.getAttribute("data-level"),
      });
    };
    await apply(
      buildFrame({ action: "notify", target: "status", html: "<p>hi</p>", attributes: { "data-level": "warn" } }),
    );
    expect(seen).toEqual([{ target: "status", html: "<p>hi</p>", level: "warn" }]);
  });

  it("a hostile target is an attribute value, not markup", async () => {
    const target = `x" onclick="alert(1)"><img src=x onerror=alert(1)>`;
    document.body.insertAdjacentHTML(
      "beforeend",
      `<div id="${"x&quot; onclick=&quot;alert(1)&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"}"></div>`,
    );
    await apply(buildFrame({ action: "update", target, html: "safe" }));
    expect(document.getElementById(target)!.textContent).toBe("safe");
    expect(document.querySelector("img")).toBeNull();
  });
});
