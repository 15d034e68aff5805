import { FrameOptionsError } from "../errors.js";
import { escapeHtml } from "./escape.js";

/** The actions Turbo 8 ships with. Any other lowercase name is a custom action. */
export const BUILTIN_ACTIONS = [
  "append",
  "prepend",
  "replace",
  "update",
  "remove",
  "before",
  "after",
  "refresh",
] as const;

export type BuiltinAction = (typeof BUILTIN_ACTIONS)[number];

/** Actions whose frame carries rendered HTML in a `<template>`. */
export const TEMPLATE_ACTIONS: ReadonlySet<string> = new Set([
  "append",
  "prepend",
  "replace",
  "update",
  "before",
  "after",
]);

/** Where a frame applies: exactly one of an element id or a CSS selector. */
export type FrameTarget = { target: string; targets?: undefined } | { targets: string; target?: undefined };

export interface FrameSpec {
  action: string;
  /** An element id. Exactly one of `target` and `targets` (not for `refresh`). */
  target?: string | undefined;
  /** A CSS selector. Exactly one of `target` and `targets` (not for `refresh`). */
  targets?: string | undefined;
  /** Rendered HTML placed inside `<template>`; for actions that insert content. */
  html?: string | undefined;
  /** `"morph"` on replace and update (Turbo 8 morphing). */
  method?: "morph" | "replace" | undefined;
  /** `request-id` on refresh, so the page that caused it can ignore it. */
  requestId?: string | undefined;
  /** Extra attributes, for custom actions. Names must be plain attribute names. */
  attributes?: Record<string, string | number | boolean> | undefined;
}

const ACTION_NAME = /^[a-z][a-z0-9_-]*$/;
const ATTRIBUTE_NAME = /^[a-zA-Z_:][-a-zA-Z0-9_:.]*$/;
const RESERVED_ATTRIBUTES = new Set(["action", "target", "targets", "method", "request-id"]);

/**
 * Builds one `<turbo-stream>` element. Pure: a spec in, markup out.
 * Attribute values are escaped; `html` is trusted (it is template output,
 * itself rendered with autoescape) and goes inside `<template>`.
 *
 * @example
 * buildFrame({ action: "append", target: "messages", html: "<p>hi</p>" })
 * // <turbo-stream action="append" target="messages"><template><p>hi</p></template></turbo-stream>
 */
export function buildFrame(spec: FrameSpec): string {
  const { action } = spec;
  if (typeof action !== "string" || !ACTION_NAME.test(action)) {
    throw new FrameOptionsError(`invalid action name ${JSON.stringify(action)}: lowercase letters, digits, - and _`);
  }
  const hasTarget = spec.target !== undefined && spec.target !== null;
  const hasTargets = spec.targets !== undefined && spec.targets !== null;
  let attrs = ` action="${action}"`;

  if (action === "refresh") {
    if (hasTarget || hasTargets) throw new FrameOptionsError("refresh takes no target or targets");
    if (spec.html !== undefined) throw new FrameOptionsError("refresh carries no template");
    if (spec.requestId !== undefined) attrs += ` request-id="${escapeHtml(String(spec.requestId))}"`;
    if (spec.method !== undefined) throw new FrameOptionsError("method applies to replace and update only");
  } else {
    if (hasTarget === hasTargets) {
      throw new FrameOptionsError(`${action} needs exactly one of target or targets`);
    }
    const value = hasTarget ? spec.target : spec.targets;
    if (typeof value !== "string" || value === "") {
      throw new FrameOptionsError(`${action}: ${hasTarget ? "target" : "targets"} must be a non-empty string`);
    }
    attrs += hasTarget ? ` target="${escapeHtml(value)}"` : ` targets="${escapeHtml(value)}"`;
    if (spec.requestId !== undefined) throw new FrameOptionsError("request-id applies to refresh only");
    if (spec.method !== undefined) {
      if (action !== "replace" && action !== "update") {
        throw new FrameOptionsError(`method applies to replace and update only, not ${action}`);
      }
      if (spec.method !== "morph" && spec.method !== "replace") {
        throw new FrameOptionsError(`method must be "morph" (or "replace"), got ${JSON.stringify(spec.method)}`);
      }
      if (spec.method === "morph") attrs += ` method="morph"`;
    }
    if (action === "remove" && spec.html !== undefined) throw new FrameOptionsError("remove carries no template");
    if (TEMPLATE_ACTIONS.has(action) && spec.html === undefined) {
      throw new FrameOptionsError(`${action} needs rendered HTML`);
    }
  }

  if (spec.attributes) {
    for (const [name, value] of Object.entries(spec.attributes)) {
      if (!ATTRIBUTE_NAME.test(name) || RESERVED_ATTRIBUTES.has(name.toLowerCase())) {
        throw new FrameOptionsError(`invalid extra attribute name ${JSON.stringify(name)}`);
      }
      if (value === false) continue;
      attrs += value === true ? ` ${name}` : ` ${name}="${escapeHtml(String(value))}"`;
    }
  }

  const body = spec.html === undefined ? "" : `<template>${spec.html}</template>`;
  return `<turbo-stream${attrs}>${body}</turbo-stream>`;
}
