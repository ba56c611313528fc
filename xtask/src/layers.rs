//! The layering rules of the agent and the controller, checked on the source.
//!
//! Each crate's top-level modules form a graph (an edge from `a` to `b` when a
//! file under `a` names `crate::b`, or `super::` paths that climb into `b`).
//! The rules are: no cycles between top-level modules, and a table of edges
//! that must not exist (probes know neither detectors nor configuration,
//! controller services know no HTTP, the CLI knows nothing of the server).
//! `main.rs` and `lib.rs` are roots and may name anything. Test modules at the
//! end of a file (`#[cfg(test)]` at column 0) are left out: tests may reach for
//! fixtures anywhere.
//!
//! A hand-written scanner rather than a parser: the paths it looks for
//! (`crate::x`, `crate::{x, y::z}`, `super::`) are lexically simple, and a full
//! parser (syn) would be a large dependency for the one fact this needs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// Top-level module -> the top-level modules it names.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// Reads every `.rs` file under `src` and returns the module graph. Crate
/// roots (`lib.rs`, `main.rs`) and binaries under `src/bin` are left out.
pub fn graph(src: &Path) -> Result<Graph> {
    let mut files = Vec::new();
    collect(src, &mut files)?;
    let mut graph = Graph::new();
    for file in files {
        let rel = file.strip_prefix(src).context("file outside src")?;
        let module = module_path(rel);
        let Some(top) = module.first().cloned() else {
            continue; // lib.rs / main.rs: roots
        };
        if top == "bin" {
            continue;
        }
        let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let targets = graph.entry(top.clone()).or_default();
        for target in references(&module, &code_only(&text)) {
            if target != top {
                targets.insert(target);
            }
        }
    }
    Ok(graph)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `faults/tree/plan.rs` -> [faults, tree, plan]; `faults/mod.rs` -> [faults];
/// `lib.rs` -> [].
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if !matches!(stem, "mod" | "lib" | "main") {
            parts.push(stem.to_owned());
        }
    }
    parts
}

/// The file without line comments and without the trailing `#[cfg(test)]` module.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let code = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Top-level modules named by `crate::` and `super::` paths in `code`, a file of
/// module `module`.
fn references(module: &[String], code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &code[i..];
        let boundary = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != b':';
        if boundary && rest.starts_with("crate::") {
            i += "crate::".len();
            found.extend(first_segments(&code[i..]));
            continue;
        }
        if boundary && rest.starts_with("super::") {
            // Count the climbs: super::super::x from a/b/c names a::x.
            let mut up = 0;
            let mut j = i;
            while code[j..].starts_with("super::") {
                up += 1;
                j += "super::".len();
            }
            // The module a `super` is relative to is the file's own module
            // (for mod.rs files that is the directory).
            let base_len = module.len().saturating_sub(up);
            if base_len == 0 {
                found.extend(first_segments(&code[j..]));
            } else if let Some(top) = module.first() {
                found.insert(top.clone());
            }
            i = j;
            continue;
        }
        i += rest.chars().next().map_or(1, char::len_utf8);
    }
    found.retain(|s| !matches!(s.as_str(), "self" | "super" | "crate" | "*"));
    found
}

/// The first path segment after `crate::`, or each first segment of a
/// `{a, b::c, d::{e}}` group.
fn first_segments(rest: &str) -> Vec<String> {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 0usize;
        let mut item = String::new();
        let mut out = Vec::new();
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.extend(leading_ident(&item));
                    item.clear();
                    continue;
                }
                _ => {}
            }
            if depth == 0 || c != '{' {
                item.push(c);
            }
        }
        out.extend(leading_ident(&item));
        out
    } else {
        leading_ident(rest).into_iter().collect()
    }
}

fn leading_ident(s: &str) -> Option<String> {
    let s = s.trim_start();
    let ident: String = s
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!ident.is_empty()).then_some(ident)
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Every cycle between top-level modules, each as a path `a -> b -> a`.
pub fn cycles(graph: &Graph) -> Vec<String> {
    // Strongly connected components (Tarjan would do; the graphs have ~20 nodes,
    // so reachability per pair is simpler and enough).
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(n) = stack.pop() {
            for m in graph.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    stack.push(m.clone());
                }
            }
        }
        seen
    };
    let mut out = Vec::new();
    let mut reported = BTreeSet::new();
    for (a, targets) in graph {
        for b in targets {
            if a < b && reach(b).contains(a) && reported.insert((a.clone(), b.clone())) {
                out.push(format!("{a} -> {b} -> ... -> {a}"));
            }
        }
    }
    out
}

/// Edges of `graph` that the rules forbid: for each `(from, to)` rule, the
/// top-level module `from` must name none of `to`.
pub fn violations(graph: &Graph, forbidden: &[(&str, &[&str])]) -> Vec<String> {
    let mut out = Vec::new();
    for (from, targets) in graph {
        for (rule_from, rule_to) in forbidden {
            if from == rule_from {
                for t in targets {
                    if rule_to.contains(&t.as_str()) {
                        out.push(format!("{from} -> {t}"));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(module: &[&str], code: &str) -> Vec<String> {
        let module: Vec<String> = module.iter().map(|s| (*s).to_owned()).collect();
        references(&module, code).into_iter().collect()
    }

    #[test]
    fn finds_plain_grouped_and_nested_crate_paths() {
        let code = "use crate::config::Config;\nuse crate::{detect::Transition, probes::{nic, qdisc}, metrics};\n\
                    fn f() { crate::sys::now(); }";
        assert_eq!(
            refs(&["signals", "drops"], code),
            ["config", "detect", "metrics", "probes", "sys"]
        );
    }

    #[test]
    fn super_paths_resolve_against_the_file_module() {
        // signals/drops.rs: super:: is signals (same top), super::super:: is the crate root.
        assert_eq!(refs(&["signals", "drops"], "use super::Signal;"), ["signals"]);
        assert_eq!(refs(&["signals", "drops"], "use super::super::config::X;"), ["config"]);
        // a top-level file: super:: is the crate root.
        assert_eq!(refs(&["reporter"], "use super::faults::caps;"), ["faults"]);
    }

    #[test]
    fn comments_strings_and_test_modules_do_not_count() {
        let code = "// crate::config is not read here\nfn f() {}\n#[cfg(test)]\nmod tests { use crate::config; }";
        assert!(refs(&["probes", "nic"], &code_only(code)).is_empty());
        // an identifier that merely ends in `crate` is not a path root
        assert!(refs(&["x"], "let notcrate::y = 1;").is_empty());
    }

    #[test]
    fn finds_cycles_and_forbidden_edges() {
        let mut g = Graph::new();
        g.entry("api".into()).or_default().insert("faults".into());
        g.entry("faults".into()).or_default().insert("api".into());
        g.entry("probes".into()).or_default().insert("config".into());
        assert_eq!(cycles(&g), ["api -> faults -> ... -> api"]);
        assert_eq!(
            violations(&g, &[("probes", &["config", "detect"])]),
            ["probes -> config"]
        );
        assert!(violations(&g, &[("probes", &["detect"])]).is_empty());
    }

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask has a parent")
            .to_path_buf()
    }

    fn report(name: &str, graph: &Graph, forbidden: &[(&str, &[&str])]) {
        let cyc = cycles(graph);
        let bad = violations(graph, forbidden);
        assert!(
            cyc.is_empty() && bad.is_empty(),
            "{name}: import cycles between top-level modules: {cyc:?}; edges against the layering rules: {bad:?}\n\
             (graph: {graph:#?})"
        );
    }

    #[test]
    fn agent_modules_import_downward_only() {
        let graph = graph(&workspace().join("agent/src")).expect("agent sources");
        for layer in ["probes", "detect", "signals"] {
            assert!(graph.contains_key(layer), "agent/src/{layer} is missing");
        }
        report(
            "agent",
            &graph,
            &[
                // Readers of the kernel know nothing above them.
                (
                    "probes",
                    &[
                        "detect", "config", "signals", "findings", "metrics", "faults", "reporter", "http", "channel",
                    ],
                ),
                // Detectors are pure: they may use the probes' sample types,
                // never configuration, I/O, the store or the runner.
                (
                    "detect",
                    &[
                        "config", "signals", "findings", "metrics", "faults", "reporter", "http", "ebpf", "sys",
                        "channel",
                    ],
                ),
                // Configuration holds the detectors' parameters; it knows
                // nothing of what runs them.
                ("config", &["signals", "reporter", "channel", "http"]),
            ],
        );
    }

    #[test]
    fn controller_modules_import_downward_only() {
        let graph = graph(&workspace().join("controller/src")).expect("controller sources");
        for layer in ["api", "store", "cli"] {
            assert!(graph.contains_key(layer), "controller/src/{layer} is missing");
        }
        let services: Vec<&str> = ["agents", "findings", "faults", "paths", "gamedays"]
            .into_iter()
            .filter(|s| graph.contains_key(*s))
            .collect();
        let mut rules: Vec<(&str, &[&str])> = vec![(
            "store",
            &["api", "cli", "agents", "findings", "faults", "paths", "gamedays"],
        )];
        for s in &services {
            rules.push((s, &["api", "cli"]));
        }
        report("controller", &graph, &rules);
        // The CLI is a client: it names nothing of the server.
        let cli = graph.get("cli").cloned().unwrap_or_default();
        assert!(cli.is_empty(), "controller/src/cli names server modules: {cli:?}");
    }
}
