import nunjucks from "nunjucks";
import { ConfigError } from "../errors.js";

/** What `createTurbo({ views })` accepts: a nunjucks Environment, or the folder(s) to load templates from. */
export type ViewsOption = nunjucks.Environment | string | string[];

/**
 * Resolves the views option to a nunjucks Environment with autoescape on.
 * An Environment with autoescape off is refused: template output goes into
 * pages verbatim, so a `<script>` in a message body must arrive as text.
 */
export function resolveViews(views: ViewsOption | undefined): nunjucks.Environment {
  if (views === undefined) {
    throw new ConfigError("views is required: a nunjucks Environment (autoescape on) or a templates folder");
  }
  if (typeof views === "string" || Array.isArray(views)) {
    return new nunjucks.Environment(new nunjucks.FileSystemLoader(views), { autoescape: true });
  }
  const opts = (views as unknown as { opts?: { autoescape?: boolean } }).opts;
  if (typeof (views as { render?: unknown }).render !== "function") {
    throw new ConfigError("views must be a nunjucks Environment or a templates folder");
  }
  if (opts && opts.autoescape === false) {
    throw new ConfigError("the nunjucks Environment has autoescape off; turbocast needs autoescape: true");
  }
  return views;
}
