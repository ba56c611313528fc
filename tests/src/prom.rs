//! A tiny parser of the Prometheus text exposition format, enough for tests
//! to read `/metrics`: `name{label="value",...} value [timestamp]` lines,
//! `#` comments skipped, label values with `\\`, `\"` and `\n` escapes,
//! values `NaN`, `+Inf`, `-Inf`.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// Whether every `(label, value)` in `subset` is on this sample.
    pub fn matches(&self, subset: &[(&str, &str)]) -> bool {
        subset
            .iter()
            .all(|(k, v)| self.labels.get(*k).is_some_and(|have| have == v))
    }
}

/// Parses every sample of `text`; lines that are not valid samples are
/// skipped (this is a test helper, not a validator: see [`parse_line`]).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(|l| parse_line(l).ok().flatten()).collect()
}

/// Parses one line: `Ok(None)` for blanks and comments, `Err` with the reason
/// for a malformed sample.
pub fn parse_line(line: &str) -> Result<Option<Sample>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("empty metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            // Skip separators.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some((i, '}')) => {
                    rest = &after[i + 1..];
                    break;
                }
                None => return Err("unterminated label set".into()),
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            let key = key.trim().to_owned();
            while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
                chars.next();
            }
            if !matches!(chars.next(), Some((_, '"'))) {
                return Err(format!("label {key}: value is not quoted"));
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, other)) => value.push(other),
                        None => return Err("dangling escape".into()),
                    },
                    other => value.push(other),
                }
            }
            if !closed {
                return Err(format!("label {key}: unterminated value"));
            }
            labels.insert(key, value);
        }
    }
    let value_text = rest.split_whitespace().next().ok_or("no value")?;
    let value = match value_text {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|e| format!("value {v:?}: {e}"))?,
    };
    Ok(Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    }))
}

/// Samples named `name` whose labels include `subset`.
pub fn find(text: &str, name: &str, subset: &[(&str, &str)]) -> Vec<Sample> {
    parse(text)
        .into_iter()
        .filter(|s| s.name == name && s.matches(subset))
        .collect()
}

/// Sum over the samples named `name` whose labels include `subset` (0 when
/// none match).
pub fn sum(text: &str, name: &str, subset: &[(&str, &str)]) -> f64 {
    find(text, name, subset).iter().map(|s| s.value).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP graydar_kernel_drops_total Kernel drops.
# TYPE graydar_kernel_drops_total counter
graydar_kernel_drops_total{interface="vb",reason="NETFILTER_DROP"} 512
graydar_kernel_drops_total{interface="vb",reason="NO_SOCKET"} 3
graydar_kernel_drops_total{interface="lo",reason="NO_SOCKET"} 7

graydar_ebpf_programs_attached 1
graydar_drop_ratio{kind="kernel_drops",interface="vb",direction="any",window="short"} 0.125 1700000000000
weird{a="x\"y\\z\nw", b = "" ,} -Inf
nan_metric NaN
"#;

    #[test]
    fn parses_names_labels_values() {
        let s = parse(TEXT);
        assert_eq!(s.len(), 7);
        assert_eq!(s[0].name, "graydar_kernel_drops_total");
        assert_eq!(s[0].labels["interface"], "vb");
        assert_eq!(s[0].labels["reason"], "NETFILTER_DROP");
        assert_eq!(s[0].value, 512.0);
        assert_eq!(s[3].name, "graydar_ebpf_programs_attached");
        assert!(s[3].labels.is_empty());
        assert_eq!(s[4].value, 0.125, "timestamp is ignored");
        assert_eq!(s[5].labels["a"], "x\"y\\z\nw");
        assert_eq!(s[5].labels["b"], "");
        assert_eq!(s[5].value, f64::NEG_INFINITY);
        assert!(s[6].value.is_nan());
    }

    #[test]
    fn sum_over_label_subsets() {
        assert_eq!(sum(TEXT, "graydar_kernel_drops_total", &[]), 522.0);
        assert_eq!(sum(TEXT, "graydar_kernel_drops_total", &[("interface", "vb")]), 515.0);
        assert_eq!(
            sum(TEXT, "graydar_kernel_drops_total", &[("reason", "NO_SOCKET")]),
            10.0
        );
        assert_eq!(
            sum(
                TEXT,
                "graydar_kernel_drops_total",
                &[("interface", "lo"), ("reason", "NO_SOCKET")]
            ),
            7.0
        );
        assert_eq!(sum(TEXT, "graydar_kernel_drops_total", &[("interface", "nope")]), 0.0);
        assert_eq!(sum(TEXT, "no_such_metric", &[]), 0.0);
        assert_eq!(
            find(TEXT, "graydar_kernel_drops_total", &[("reason", "NO_SOCKET")]).len(),
            2
        );
    }

    #[test]
    fn malformed_lines_are_errors_and_skipped() {
        assert!(parse_line("x{a=\"1\" 2").is_err());
        assert!(parse_line("x{a=1} 2").is_err());
        assert!(parse_line("x notanumber").is_err());
        assert!(parse_line("x").is_err());
        assert_eq!(parse_line("   # comment").expect("comment"), None);
        assert_eq!(parse("x{a=1} 2\ny 3\n").len(), 1);
    }
}
