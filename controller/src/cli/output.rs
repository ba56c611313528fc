//! Output helpers shared by every command: aligned tables, JSON and YAML.

use clap::ValueEnum;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            s.push_str(c);
            if i + 1 < n {
                let pad = widths[i].saturating_sub(c.chars().count()) + 2;
                s.push_str(&" ".repeat(pad));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// Pretty JSON with a final newline.
pub fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// YAML (the same document as [`json`]), ending in a newline.
pub fn yaml<T: serde::Serialize>(v: &T) -> String {
    let mut s = serde_yaml::to_string(v).unwrap_or_default();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// `v` as JSON, as YAML or as the table `text` makes of it.
pub fn show<T: serde::Serialize>(output: Output, v: &T, text: impl FnOnce(&T) -> String) -> String {
    match output {
        Output::Json => json(v),
        Output::Yaml => yaml(v),
        Output::Table => text(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_is_the_json_document() {
        let v = serde_json::json!({"id": "flt-1", "agents": [{"agent": "a", "state": "active"}], "n": 2});
        let y = show(Output::Yaml, &v, |_| String::new());
        let back: serde_json::Value = serde_yaml::from_str(&y).expect("YAML parses");
        assert_eq!(back, v);
        assert!(y.contains("id: flt-1") && y.ends_with('\n'), "{y}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&show(Output::Json, &v, |_| String::new())).expect("JSON"),
            v
        );
    }

    #[test]
    fn tables_are_aligned() {
        let t = table(
            &["A", "LONG HEADER", "C"],
            &[
                vec!["xxxxx".into(), "y".into(), "z".into()],
                vec!["1".into(), "2".into(), "3".into()],
            ],
        );
        assert_eq!(
            t,
            "A      LONG HEADER  C\nxxxxx  y            z\n1      2            3\n"
        );
    }
}
