//! The user documentation: an mdBook in `docs/` (installed by `cargo xtask
//! setup`), built and link-checked by `cargo xtask docs` and the unit tier.
//!
//! The checker reads the rendered HTML, so it sees exactly what mdBook made of
//! the sources: `.md` links rewritten to `.html`, heading ids, included
//! runbooks. In every page's `<main>`:
//! - a relative link must reach a file of the book, and its `#fragment` an
//!   `id` of that page;
//! - a link that leaves the book (`docs/book` sits next to `docs/src`, so
//!   `../../deploy/` means the same from both) must name an existing file or
//!   directory of the repository;
//! - no `{{#include ...}}` may be left unexpanded.
//!
//! The repository's own markdown pages read outside the book (README.md,
//! deploy/README.md) are checked too: every relative link names an existing
//! file or directory.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// The mdBook version `cargo xtask setup` installs and the docs build expects.
pub const MDBOOK_VERSION: &str = "0.5.4";

/// Markdown pages of the repository that are read where they are (on a
/// forge, in the dist tarball), not through the book.
const REPO_PAGES: &[&str] = &["README.md", "deploy/README.md"];

/// Pages mdBook generates around the chapters: their links are mdBook's own
/// (the print page repeats every chapter, 404 uses the site root).
const GENERATED_PAGES: &[&str] = &["print.html", "404.html", "toc.html"];

fn installed_version() -> Option<String> {
    let out = Command::new("mdbook").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn has_pinned_version(version_line: &str) -> bool {
    version_line
        .split_whitespace()
        .any(|w| w.trim_start_matches('v') == MDBOOK_VERSION)
}

/// Installs mdBook from crates.io when it is missing or another version;
/// returns what it did.
pub fn setup() -> Result<Option<String>> {
    if installed_version().is_some_and(|v| has_pinned_version(&v)) {
        return Ok(None);
    }
    println!("xtask setup: installing mdbook {MDBOOK_VERSION} (about 2 minutes)...");
    crate::ok(Command::new("cargo").args([
        "install",
        "mdbook",
        "--locked",
        "--version",
        MDBOOK_VERSION,
        // Only `mdbook build` is needed: no server, no file watcher.
        "--no-default-features",
        "--features",
        "search",
    ]))?;
    Ok(Some(format!("installed mdbook {MDBOOK_VERSION}")))
}

/// Builds `docs/` into `docs/book` and checks every link; fails naming each
/// broken one, or naming `cargo xtask setup` when mdBook is not there.
pub fn build_and_check(ws: &Path) -> Result<()> {
    match installed_version() {
        Some(v) if has_pinned_version(&v) => {}
        Some(v) => bail!("the docs need mdbook {MDBOOK_VERSION}, found {v:?}: run `cargo xtask setup`"),
        None => bail!("mdbook is not installed (the docs need {MDBOOK_VERSION}): run `cargo xtask setup`"),
    }
    let book = ws.join("docs/book");
    if book.exists() {
        // Pages of chapters that were removed must not satisfy a link.
        std::fs::remove_dir_all(&book).with_context(|| format!("removing {}", book.display()))?;
    }
    let out = Command::new("mdbook")
        .arg("build")
        .arg(ws.join("docs"))
        .output()
        .context("running mdbook build")?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("mdbook build docs failed:\n{log}");
    }
    // mdBook logs a failed include or a broken SUMMARY entry and goes on.
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    if !errors.is_empty() {
        bail!("mdbook build docs reported problems:\n{}", errors.join("\n"));
    }
    let mut broken = check_book(&book, ws)?;
    for page in REPO_PAGES {
        broken.extend(check_markdown(ws, &ws.join(page))?);
    }
    if !broken.is_empty() {
        bail!(
            "{} broken link(s) (pages of docs/src, or {}):\n  {}",
            broken.len(),
            REPO_PAGES.join(", "),
            broken.join("\n  ")
        );
    }
    println!("docs: book built in {} and every link resolves", book.display());
    Ok(())
}

/// Every broken link of the rendered book in `book`, as
/// `page: link: why`; `repo` bounds the links that leave the book.
pub fn check_book(book: &Path, repo: &Path) -> Result<Vec<String>> {
    let mut pages = Vec::new();
    collect_html(book, &mut pages)?;
    pages.sort();
    let mut ids: HashMap<PathBuf, BTreeSet<String>> = HashMap::new();
    let mut broken = Vec::new();
    for page in &pages {
        let name = page.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        // Named as its source: `findings/x.html` comes from `docs/src/findings/x.md`.
        let rel = page
            .strip_prefix(book)
            .unwrap_or(page)
            .with_extension("md")
            .display()
            .to_string();
        if page.parent() == Some(book) && GENERATED_PAGES.contains(&name) {
            continue;
        }
        let html = std::fs::read_to_string(page).with_context(|| format!("reading {}", page.display()))?;
        let main = main_of(&html);
        if main.contains("{{#include") {
            broken.push(format!("{rel}: an {{{{#include}}}} was not expanded (a missing file?)"));
        }
        for link in attr_values(main, "href").into_iter().chain(attr_values(main, "src")) {
            if let Err(why) = check_link(book, repo, page, &link, &mut ids) {
                broken.push(format!("{rel}: {link}: {why}"));
            }
        }
    }
    Ok(broken)
}

/// Every relative link `[text](target)` of the markdown file `page` whose
/// target does not exist, as `page: link: why` (fenced code is skipped).
pub fn check_markdown(repo: &Path, page: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(page).with_context(|| format!("reading {}", page.display()))?;
    let rel = page.strip_prefix(repo).unwrap_or(page).display().to_string();
    let dir = page.parent().unwrap_or(repo);
    let mut broken = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            let link = rest[..end].split_whitespace().next().unwrap_or_default();
            rest = &rest[end..];
            let path = link.split('#').next().unwrap_or_default();
            if link.is_empty() || is_external(link) || path.is_empty() {
                continue;
            }
            let target = normalize(&dir.join(percent_decode(path)));
            if !target.starts_with(repo) {
                broken.push(format!("{rel}: {link}: leaves the repository"));
            } else if !target.exists() {
                broken.push(format!("{rel}: {link}: {} does not exist", target.display()));
            }
        }
    }
    Ok(broken)
}

fn check_link(
    book: &Path,
    repo: &Path,
    page: &Path,
    link: &str,
    ids: &mut HashMap<PathBuf, BTreeSet<String>>,
) -> Result<(), String> {
    if is_external(link) {
        return Ok(());
    }
    let (path, fragment) = match link.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (link, None),
    };
    let path = path.split('?').next().unwrap_or_default();
    let target = if path.is_empty() {
        page.to_path_buf()
    } else {
        let dir = page.parent().unwrap_or(book);
        normalize(&dir.join(percent_decode(path)))
    };
    if !target.starts_with(book) {
        // Out of the book: a file of the repository.
        if !target.starts_with(repo) {
            return Err("leaves the repository".into());
        }
        if target.extension().is_some_and(|e| e == "html") && target.with_extension("md").exists() {
            return Err("links a markdown file outside the book (mdBook turns it into .html): \
                 include it in the book instead"
                .into());
        }
        if !target.exists() {
            return Err(format!("{} does not exist", target.display()));
        }
        return Ok(());
    }
    let target = if target.is_dir() {
        target.join("index.html")
    } else {
        target
    };
    if !target.is_file() {
        return Err("no such page in the book".into());
    }
    let Some(fragment) = fragment.filter(|f| !f.is_empty()) else {
        return Ok(());
    };
    if target.extension().is_none_or(|e| e != "html") {
        return Ok(());
    }
    if !ids.contains_key(&target) {
        let html = std::fs::read_to_string(&target).map_err(|e| format!("reading {}: {e}", target.display()))?;
        ids.insert(target.clone(), attr_values(&html, "id").into_iter().collect());
    }
    let fragment = percent_decode(fragment);
    if ids.get(&target).is_some_and(|s| s.contains(&fragment)) {
        Ok(())
    } else {
        Err(format!("no anchor #{fragment} in that page"))
    }
}

fn collect_html(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_html(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "html") {
            out.push(path);
        }
    }
    Ok(())
}

/// The chapter's own content: mdBook wraps it in `<main>`; the sidebar and
/// navigation around it are mdBook's.
fn main_of(html: &str) -> &str {
    match (html.find("<main>"), html.rfind("</main>")) {
        (Some(a), Some(b)) if a < b => &html[a..b],
        _ => html,
    }
}

/// The values of every `name="..."` attribute, entities decoded.
fn attr_values(html: &str, name: &str) -> Vec<String> {
    let pat = format!(" {name}=\"");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find(&pat) {
        rest = &rest[i + pat.len()..];
        let Some(end) = rest.find('"') else {
            break;
        };
        out.push(decode_entities(&rest[..end]));
        rest = &rest[end..];
    }
    out
}

fn decode_entities(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `http:`, `mailto:`, `//host/...`: not ours to check offline.
fn is_external(link: &str) -> bool {
    if link.starts_with("//") {
        return true;
    }
    let scheme_end = link.find(':');
    let first_sep = link.find(['/', '#', '?']);
    match (scheme_end, first_sep) {
        (Some(c), Some(s)) => c < s,
        (Some(_), None) => true,
        _ => false,
    }
}

/// `a/b/../c` -> `a/c` without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway repository with a rendered book in `docs/book`.
    struct Fixture {
        root: PathBuf,
    }

    impl Fixture {
        fn new(name: &str) -> Fixture {
            let root = std::env::temp_dir().join(format!("xtask-docs-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("docs/book/findings")).expect("create the book");
            std::fs::create_dir_all(root.join("deploy/k8s")).expect("create a repo dir");
            std::fs::write(root.join("deploy/agent.example.toml"), "").expect("repo file");
            std::fs::write(root.join("runbooks.md"), "").expect("repo markdown");
            Fixture { root }
        }

        fn book(&self) -> PathBuf {
            self.root.join("docs/book")
        }

        fn page(&self, rel: &str, main: &str) {
            let html = format!(
                "<html><head><link href=\"css/missing.css\"></head><body>\
                 <nav><a href=\"nowhere.html\">sidebar</a></nav><main>{main}</main></body></html>"
            );
            std::fs::write(self.book().join(rel), html).expect("write page");
        }

        fn broken(&self) -> Vec<String> {
            check_book(&self.book(), &self.root).expect("check")
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn links_anchors_and_repository_files_that_exist_pass() {
        let f = Fixture::new("good");
        f.page(
            "index.html",
            "<h1 id=\"intro\">x</h1>\
             <a href=\"findings/nic_drops.html\">a</a>\
             <a href=\"findings/nic_drops.html#evidence\">b</a>\
             <a href=\"#intro\">c</a>\
             <a href=\"../../deploy/agent.example.toml\">d</a>\
             <a href=\"../../deploy/k8s/\">e</a>\
             <a href=\"https://example.com/x#y\">f</a>\
             <a href=\"mailto:a@b\">g</a>\
             <a href=\"findings/\">h</a>",
        );
        f.page(
            "findings/nic_drops.html",
            "<h2 id=\"evidence\">e</h2><a href=\"../index.html#intro\">up</a>",
        );
        f.page("findings/index.html", "");
        // mdBook's own pages are not checked.
        f.page("print.html", "<a href=\"gone.html\">x</a>");
        assert_eq!(f.broken(), Vec::<String>::new());
    }

    #[test]
    fn broken_pages_anchors_repository_files_and_includes_are_named() {
        let f = Fixture::new("bad");
        f.page(
            "index.html",
            "<a href=\"findings/missing.html\">a</a>\
             <a href=\"findings/nic_drops.html#nope\">b</a>\
             <a href=\"#self-missing\">c</a>\
             <a href=\"../../deploy/gone.toml\">d</a>\
             <a href=\"../../runbooks.html\">e</a>\
             <a href=\"../../../../../../../../etc/passwd\">f</a>\
             <img src=\"img/none.png\">\
             {{#include ../../runbooks/x.md}}",
        );
        f.page("findings/nic_drops.html", "<h2 id=\"evidence\">e</h2>");
        let broken = f.broken();
        let has = |link: &str, why: &str| {
            assert!(
                broken.iter().any(|b| b.contains(link) && b.contains(why)),
                "{link} ({why}) not reported: {broken:#?}"
            );
        };
        has("findings/missing.html", "no such page");
        has("findings/nic_drops.html#nope", "no anchor #nope");
        has("#self-missing", "no anchor #self-missing");
        has("../../deploy/gone.toml", "does not exist");
        has("../../runbooks.html", "include it in the book");
        has("etc/passwd", "leaves the repository");
        has("img/none.png", "no such page");
        has("index.md", "was not expanded");
        assert_eq!(broken.len(), 8, "{broken:#?}");
    }

    #[test]
    fn markdown_pages_name_existing_files() {
        let f = Fixture::new("markdown");
        let page = f.root.join("README.md");
        std::fs::write(
            &page,
            "See [the book](docs/book/) and [deploy](deploy/agent.example.toml#L1), [web](https://x.org/a),\n\
             [top](#graydar), [gone](docs/src/gone.md) and [out](../../../../../../../x).\n\
             ```\n[not a link](in/code.md)\n```\n",
        )
        .expect("write README");
        let broken = check_markdown(&f.root, &page).expect("check");
        assert_eq!(broken.len(), 2, "{broken:#?}");
        assert!(broken[0].contains("docs/src/gone.md") && broken[0].contains("does not exist"));
        assert!(broken[1].contains("leaves the repository"));
    }

    #[test]
    fn helpers_decode_and_normalize() {
        assert!(is_external("https://x/y"));
        assert!(is_external("mailto:x"));
        assert!(!is_external("a/b:c.html"));
        assert!(!is_external("#a"));
        assert_eq!(percent_decode("a%20b%2"), "a b%2");
        assert_eq!(decode_entities("a&amp;b&quot;"), "a&b\"");
        assert_eq!(normalize(Path::new("/a/b/../c/./d")), PathBuf::from("/a/c/d"));
        assert_eq!(
            attr_values("<a href=\"x&amp;y\"><b id=\"q\">", "href"),
            vec!["x&y".to_owned()]
        );
        assert!(has_pinned_version(&format!("mdbook v{MDBOOK_VERSION}")));
        assert!(!has_pinned_version("mdbook v0.4.40"));
    }
}
