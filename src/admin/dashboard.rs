//! `GET /`: the dashboard. One self-contained HTML page, compiled into the binary: its style,
//! the vendored chart library (uPlot, MIT, `dashboard/VENDOR.md`) and its script are inlined,
//! and the page loads nothing from anywhere — no CDN, font or image; the only request it makes
//! is `GET /stats` to the listener that served it, once a second.
//!
//! The page and the sign-in page are served with a Content-Security-Policy that holds the
//! browser to that: nothing may be loaded or connected to but this listener (`connect-src
//! 'self'`), no frame may embed it (clickjacking), no form may post anywhere. Inline script and
//! style are allowed — the page is inline by design — and nothing the page shows is parsed as
//! markup (route names are set as text).
//!
//! With `admin.token_file`, `GET /` needs the token like every path, but a browser's plain
//! navigation cannot send `Authorization`. So the 401 to `GET /` carries [`SIGN_IN`]: a page with
//! no figures that takes the token (typed, or from a `#token=…` fragment, which browsers never
//! send to a server nor put in `Referer`), keeps it in the tab's `sessionStorage`, fetches `/`
//! with the header and replaces itself with the dashboard, whose requests to `/stats` carry the
//! header too. The token never appears in a URL the listener sees, nor in its logs.

use http::header::{HeaderName, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_FRAME_OPTIONS};
use http::HeaderValue;

/// The dashboard page.
pub(super) const PAGE: &str = concat!(
    "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
    "<title>sluice dashboard</title>\n<style>\n",
    include_str!("dashboard/uPlot.min.css"),
    "\n",
    include_str!("dashboard/dashboard.css"),
    "</style>\n</head>\n",
    include_str!("dashboard/body.html"),
    "<script>\n",
    include_str!("dashboard/uPlot.iife.min.js"),
    "\n</script>\n<script>\n",
    include_str!("dashboard/dashboard.js"),
    "</script>\n</body>\n</html>\n",
);

/// The body of the 401 to `GET /` when a token is needed (see the module docs).
pub(super) const SIGN_IN: &str = include_str!("dashboard/sign-in.html");

/// What both pages may load and where they may connect: nothing but this listener.
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The fields both HTML answers carry besides those of every admin answer.
pub(super) fn headers() -> [(HeaderName, HeaderValue); 3] {
    [
        (CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
        (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ]
}
