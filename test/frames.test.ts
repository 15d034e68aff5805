import { describe, expect, it } from "vitest";
import { FrameOptionsError } from "../src/errors.js";
import { escapeHtml } from "../src/frames/escape.js";
import { buildFrame } from "../src/frames/frame.js";

describe("buildFrame", () => {
  it.each(["append", "prepend", "replace", "update", "before", "after"])(
    "%s wraps the html in a template",
    (action) => {
      expect(buildFrame({ action, target: "messages", html: "<p>hi</p>" })).toBe(
        `<turbo-stream action="${action}" target="messages"><template><p>hi</p></template></turbo-stream>`,
      );
    },
  );

  it("uses targets for a CSS selector", () => {
    expect(buildFrame({ action: "append", targets: ".room > ul", html: "x" })).toBe(
      `<turbo-stream action="append" targets=".room &gt; ul"><template>x</template></turbo-stream>`,
    );
  });

  it("remove carries no template", () => {
    expect(buildFrame({ action: "remove", target: "message_1" })).toBe(
      `<turbo-stream action="remove" target="message_1"></turbo-stream>`,
    );
    expect(() => buildFrame({ action: "remove", target: "a", html: "x" })).toThrow(FrameOptionsError);
  });

  it("refresh carries no target and an optional request-id", () => {
    expect(buildFrame({ action: "refresh" })).toBe(`<turbo-stream action="refresh"></turbo-stream>`);
    expect(buildFrame({ action: "refresh", requestId: 'a"b' })).toBe(
      `<turbo-stream action="refresh" request-id="a&quot;b"></turbo-stream>`,
    );
    expect(() => buildFrame({ action: "refresh", target: "x" })).toThrow(/no target/);
    expect(() => buildFrame({ action: "refresh", html: "x" })).toThrow(/no template/);
  });

  it.each(["replace", "update"])("%s accepts method morph", (action) => {
    expect(buildFrame({ action, target: "t", html: "x", method: "morph" })).toBe(
      `<turbo-stream action="${action}" target="t" method="morph"><template>x</template></turbo-stream>`,
    );
  });

  it("method replace is the default and adds nothing", () => {
    expect(buildFrame({ action: "replace", target: "t", html: "x", method: "replace" })).toBe(
      `<turbo-stream action="replace" target="t"><template>x</template></turbo-stream>`,
    );
  });

  it("refuses method on other actions and unknown methods", () => {
    expect(() => buildFrame({ action: "append", target: "t", html: "x", method: "morph" })).toThrow(
      /replace and update only/,
    );
    expect(() => buildFrame({ action: "update", target: "t", html: "x", method: "swap" as "morph" })).toThrow(
      /method must be/,
    );
  });

  it("requires exactly one of target or targets", () => {
    const err = (() => {
      try {
        buildFrame({ action: "append", html: "x" });
      } catch (e) {
        return e;
      }
    })() as FrameOptionsError;
    expect(err).toBeInstanceOf(FrameOptionsError);
    expect(err.code).toBe("TURBOCAST_INVALID_FRAME");
    expect(err.message).toBe("append needs exactly one of target or targets");
    expect(() => buildFrame({ action: "append", target: "a", targets: ".b", html: "x" })).toThrow(
      /exactly one of target or targets/,
    );
    expect(() => buildFrame({ action: "append", target: "", html: "x" })).toThrow(/non-empty/);
  });

  it("requires html for actions that insert content", () => {
    expect(() => buildFrame({ action: "append", target: "a" })).toThrow(/needs rendered HTML/);
  });

  it("supports custom actions with escaped extra attributes", () => {
    expect(
      buildFrame({
        action: "notify",
        target: "flash",
        attributes: { "data-level": `"><script>`, open: true, hidden: false },
      }),
    ).toBe(`<turbo-stream action="notify" target="flash" data-level="&quot;&gt;&lt;script&gt;" open></turbo-stream>`);
    expect(buildFrame({ action: "console_log", targets: "body", html: "<b>x</b>" })).toContain(
      "<template><b>x</b></template>",
    );
  });

  it("refuses malformed action names and attribute names", () => {
    expect(() => buildFrame({ action: `append" onclick="x`, target: "a", html: "x" })).toThrow(/invalid action name/);
    expect(() => buildFrame({ action: "notify", target: "a", attributes: { "on click": "x" } })).toThrow(
      /invalid extra attribute/,
    );
    expect(() => buildFrame({ action: "notify", target: "a", attributes: { target: "x" } })).toThrow(
      /invalid extra attribute/,
    );
  });

  it("escapes hostile targets", () => {
    expect(buildFrame({ action: "remove", target: `x" onmouseover='alert(1)' <b>&` })).toBe(
      `<turbo-stream action="remove" target="x&quot; onmouseover=&#39;alert(1)&#39; &lt;b&gt;&amp;"></turbo-stream>`,
    );
  });
});

describe("escapeHtml", () => {
  it("escapes all five of & < > \" '", () => {
    expect(escapeHtml(`&<>"'`)).toBe("&amp;&lt;&gt;&quot;&#39;");
    expect(escapeHtml("plain text")).toBe("plain text");
  });
});
