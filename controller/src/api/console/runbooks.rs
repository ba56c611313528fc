//! The runbooks (`runbooks/*.md`), embedded in the binary and rendered to
//! HTML for a finding's page: the console works offline and shows the
//! runbook of the version that raised the finding.

use pulldown_cmark::{Event, Options, Parser, html};

/// `(name, its Markdown)` of each named file of `runbooks/`.
macro_rules! runbooks {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../../../runbooks/", $name, ".md")))),*]
    };
}

/// Every runbook by name (the file name without `.md`; a test checks that
/// every file of `runbooks/` but its README is here).
pub const RUNBOOKS: &[(&str, &str)] = runbooks![
    "agent-down",
    "asymmetric-connectivity",
    "asymmetric-route",
    "disk-hung",
    "disk-slow",
    "disk",
    "drops",
    "fsync-latency",
    "incast",
    "kernel-drops",
    "latency-asymmetry",
    "nic-drops",
    "one-way-loss",
    "paths",
    "probe-down",
    "qdisc-drops",
    "route-flap",
    "routes",
];

/// The Markdown of runbook `name`.
pub fn markdown(name: &str) -> Option<&'static str> {
    RUNBOOKS.iter().find(|(n, _)| *n == name).map(|(_, md)| *md)
}

/// Runbook `name` as HTML. Raw HTML in the Markdown is shown as text, never
/// passed through; links to other runbooks (`foo.md`) point at their
/// console pages.
pub fn html(name: &str) -> Option<String> {
    markdown(name).map(render)
}

/// Markdown to HTML, raw HTML shown as text.
fn render(md: &str) -> String {
    let events = Parser::new_ext(md, Options::ENABLE_TABLES).map(|e| match e {
        Event::Html(t) | Event::InlineHtml(t) => Event::Text(t),
        Event::Start(pulldown_cmark::Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => {
            let dest = match dest_url.strip_suffix(".md") {
                Some(other) if !other.contains('/') && !other.contains(':') => format!("/ui/runbooks/{other}").into(),
                _ => dest_url,
            };
            Event::Start(pulldown_cmark::Tag::Link {
                link_type,
                dest_url: dest,
                title,
                id,
            })
        }
        other => other,
    });
    let mut out = String::new();
    html::push_html(&mut out, events);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runbook_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../runbooks");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("runbooks/")
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter_map(|n| n.strip_suffix(".md").map(str::to_owned))
            .filter(|n| n != "README")
            .collect();
        files.sort();
        let mut embedded: Vec<String> = RUNBOOKS.iter().map(|(n, _)| (*n).to_owned()).collect();
        embedded.sort();
        assert_eq!(files, embedded);
    }

    #[test]
    fn every_finding_kind_has_its_runbook() {
        for kind in graydar_common::api::FindingKind::ALL {
            assert!(markdown(&kind.runbook()).is_some(), "{kind:?}");
        }
    }

    #[test]
    fn runbooks_render_without_raw_html_and_link_to_each_other() {
        let h = html("nic-drops").expect("nic-drops");
        assert!(h.contains("<h1>"), "{h}");
        for (name, _) in RUNBOOKS {
            let h = html(name).expect("renders");
            assert!(!h.contains("<script"), "{name}");
        }
        let h = render("See [drops](drops.md), [docs](https://x/y.md) and <script>alert(1)</script>");
        assert!(h.contains(r#"href="/ui/runbooks/drops""#), "{h}");
        assert!(h.contains(r#"href="https://x/y.md""#), "{h}");
        assert!(!h.contains("<script") && h.contains("&lt;script&gt;"), "{h}");
    }
}
