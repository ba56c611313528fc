//! `graydar paths`.

use graydar_common::client::Client;
use graydar_common::paths::PathPair;

use super::CliError;
use super::output::{Output, show, table};

/// One row per ordered pair.
pub fn paths_table(pairs: &[PathPair]) -> String {
    let opt_ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |s| format!("{:.2}ms", s * 1e3));
    let rows: Vec<Vec<String>> = pairs
        .iter()
        .map(|p| {
            vec![
                p.src.clone(),
                p.dst.clone(),
                p.state.clone(),
                p.loss_ratio
                    .map_or_else(|| "-".to_owned(), |l| format!("{:.2}%", l * 100.0)),
                format!("{}/{}", p.lost, p.delivered + p.lost),
                opt_ms(p.rtt_p50_seconds),
                opt_ms(p.rtt_p99_seconds),
                p.hops.map_or_else(|| "-".to_owned(), |h| h.to_string()),
                opt_ms(p.owd_variation_seconds),
                if p.firing.is_empty() {
                    "-".to_owned()
                } else {
                    p.firing.join(",")
                },
            ]
        })
        .collect();
    table(
        &[
            "SRC", "DST", "STATE", "LOSS", "LOST", "RTT P50", "RTT P99", "HOPS", "OWD VAR", "FIRING",
        ],
        &rows,
    )
}

pub fn run(client: &Client, output: Output) -> Result<String, CliError> {
    let m = client.paths()?;
    Ok(show(output, &m, |m| paths_table(&m.pairs)))
}
