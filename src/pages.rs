//! The pages the layer draws itself — a refused landing, the e-mail link's
//! "Continue" page, a cross-site refusal, an outage — and how an app gives
//! them its own look.
//!
//! Every such page goes through one renderer with a typed [`PageContext`]
//! (what happened, a fixed message, a way out, a retry delay), the way an
//! app themes its 404. [`default_page`] is complete on its own (`lang`,
//! `<title>`, `<meta name="viewport">`, a link back); an app plugs its
//! templates in with
//! [`AuthConfig::with_page_renderer`](crate::AuthConfig::with_page_renderer):
//!
//! ```
//! use authgate::AuthConfig;
//! use authgate::pages::{PageContext, default_page};
//!
//! let config = AuthConfig::new("https://app.example")?
//!     .with_page_renderer(|page: &PageContext<'_>| {
//!         // Your template engine here; the texts are plain text: escape them.
//!         default_page(page).replace("<body>", "<body class=\"my-app\">")
//!     });
//! # Ok::<(), authgate::ConfigError>(())
//! ```
//!
//! Texts never come from the request (SECURITY.md T-B1): they are
//! authgate's own, chosen by [`PageKind`].

use std::fmt;
use std::sync::Arc;

use http::StatusCode;

use crate::upstream::{LandingKind, User};

/// What a page of the layer is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PageKind {
    /// A callback landing was refused (expired link, denied consent, …).
    LandingRefused(LandingKind),
    /// An e-mail link waits for a click on "Continue"
    /// ([`PageContext::form_action`] is where the button posts).
    EmailLinkConfirmation,
    /// An e-mail link would switch a signed-in browser to another account:
    /// the page names both ([`PageContext::accounts`]) and offers two
    /// buttons, posting to [`PageContext::form_action`] with
    /// `?account=switch` and `?account=stay` (SECURITY.md T-B6.4).
    AccountSwitch,
    /// A state-changing request from another site was refused.
    CrossSiteRefused,
    /// A signed-in user is not allowed here (not in the group a
    /// [`RequireGroup`](crate::RequireGroup) route needs): 403.
    Forbidden,
    /// The sign-in service could not be reached ([`PageContext::retry_after`]).
    Unavailable,
    /// A sign-in was asked for with a provider the upstream does not have.
    UnknownProvider,
    /// A route of the layer was called with a method it does not take.
    MethodNotAllowed,
    /// The session is too large for the site's cookies (a retry cannot help).
    SessionTooLarge,
    /// Anything else the layer refuses (a malformed request).
    BadRequest,
}

/// A link on a page: where it goes and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageLink<'a> {
    /// A path of the app (or an absolute URL of its origin).
    pub href: &'a str,
    /// The link's text.
    pub text: &'a str,
}

/// Everything a page of the layer says. All texts are plain text: a
/// renderer escapes them.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct PageContext<'a> {
    /// What happened.
    pub kind: PageKind,
    /// The response's status.
    pub status: StatusCode,
    /// The page's title.
    pub title: &'a str,
    /// A fixed message saying what happened and what to do.
    pub message: &'a str,
    /// The way out.
    pub link: Option<PageLink<'a>>,
    /// Seconds before a retry can help, when the page is an outage.
    pub retry_after: Option<u32>,
    /// Where the page's button posts (the e-mail link's "Continue", the
    /// account switch's two buttons).
    pub form_action: Option<&'a str>,
    /// The account signed in now and the one the link signs in to (their
    /// e-mail, phone or name, as the upstream has them).
    pub accounts: Option<(&'a str, &'a str)>,
    /// The signed-in user, when the request had resolved one before the
    /// page was drawn (a guard's 403); `None` otherwise, which does not
    /// mean nobody is signed in. For the page's header.
    pub user: Option<&'a User>,
}

/// An app's page renderer: the HTML document of a page.
#[derive(Clone)]
pub struct PageRenderer(Arc<dyn Fn(&PageContext<'_>) -> String + Send + Sync>);

impl PageRenderer {
    /// Wraps a function.
    pub fn new<F>(render: F) -> Self
    where
        F: Fn(&PageContext<'_>) -> String + Send + Sync + 'static,
    {
        Self(Arc::new(render))
    }

    /// Renders a page.
    pub fn render(&self, page: &PageContext<'_>) -> String {
        (self.0)(page)
    }
}

impl Default for PageRenderer {
    fn default() -> Self {
        Self::new(default_page)
    }
}

impl fmt::Debug for PageRenderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PageRenderer(..)")
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// authgate's own page: a complete, small HTML document with no
/// third-party resources.
pub fn default_page(page: &PageContext<'_>) -> String {
    let form = match (page.form_action, page.accounts) {
        (Some(action), Some((now, next))) => format!(
            "<p>Signed in now: <strong>{now}</strong><br>The link signs in to: <strong>{next}</strong></p>\
             <form method=\"post\" action=\"{switch}\"><button type=\"submit\" id=\"authgate-switch\">Continue as {next}</button></form>\
             <form method=\"post\" action=\"{stay}\"><button type=\"submit\" id=\"authgate-stay\">Stay signed in as {now}</button></form>",
            now = escape(now),
            next = escape(next),
            switch = escape(&format!("{action}?account=switch")),
            stay = escape(&format!("{action}?account=stay")),
        ),
        _ => continue_form(page.form_action),
    };
    let link = page.link.map_or(String::new(), |link| {
        format!(
            "<p><a href=\"{}\">{}</a></p>",
            escape(link.href),
            escape(link.text)
        )
    });
    document(page, &form, &link)
}

/// The e-mail link's "Continue" button.
fn continue_form(action: Option<&str>) -> String {
    action.map_or(String::new(), |action| {
        format!(
            "<form method=\"post\" action=\"{}\"><button type=\"submit\" id=\"authgate-continue\">Continue</button></form>\
             <p><small>Did not ask to sign in? Close this page: nothing happens without the button.</small></p>",
            escape(action)
        )
    })
}

fn document(page: &PageContext<'_>, form: &str, link: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;line-height:1.5}}\
         button{{font:inherit;padding:.6rem 1.6rem;border:0;border-radius:.4rem;background:#2453d4;color:#fff;cursor:pointer}}\
         small{{color:#555}}</style></head><body><h1>{title}</h1><p>{message}</p>{form}{link}</body></html>",
        title = escape(page.title),
        message = escape(page.message),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_page_is_complete_and_escapes_everything() {
        let page = PageContext {
            kind: PageKind::BadRequest,
            status: StatusCode::BAD_REQUEST,
            title: "<b>",
            message: "a\"b'c & \u{7}",
            link: Some(PageLink {
                href: "/x?a=1&b=\"2\"",
                text: "<i>",
            }),
            retry_after: None,
            form_action: None,
            accounts: None,
            user: None,
        };
        let html = default_page(&page);
        for part in [
            "<!doctype html>",
            "<html lang=\"en\">",
            "name=\"viewport\"",
            "<title>&lt;b&gt;</title>",
            "a&quot;b&#39;c &amp;  ",
            "href=\"/x?a=1&amp;b=&quot;2&quot;\"",
        ] {
            assert!(html.contains(part), "{part}: {html}");
        }
        assert!(!html.contains("<i>") && !html.contains("<form"));
    }
}
