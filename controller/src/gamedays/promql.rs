//! The Prometheus a game day asks (`[prometheus] url`): instant queries
//! (`GET /api/v1/query`) for the preflight's PromQL checks, the abort
//! rules' PromQL and the expected alerts (`ALERTS{alertstate="firing"}`).
//! The blocking HTTP client of graydar-common (ureq) on a blocking thread:
//! a query is rare (every few seconds of a run) and small.

use std::collections::BTreeMap;

use graydar_common::client::{Client, ClientConfig};
use graydar_common::gameday::CompareOp;
use graydar_common::url::encode_segment;
use serde::Deserialize;

pub use crate::config::PrometheusConfig;

/// One sample of an instant query.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("prometheus at {url}: {message}")]
    Query { url: String, message: String },
}

#[derive(Deserialize)]
struct Response {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct VectorItem {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// A sample value as Prometheus writes it ("1", "NaN", "+Inf").
fn value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// The samples of an instant query's answer (a vector or a scalar).
fn samples(body: Response) -> Result<Vec<Sample>, String> {
    if body.status != "success" {
        return Err(body.error.unwrap_or_else(|| format!("status {}", body.status)));
    }
    let data = body.data.ok_or("an answer without data")?;
    match data.result_type.as_str() {
        "vector" => {
            let items: Vec<VectorItem> = serde_json::from_value(data.result).map_err(|e| e.to_string())?;
            items
                .into_iter()
                .map(|i| {
                    Ok(Sample {
                        value: value(&i.value.1).ok_or_else(|| format!("sample value {:?}", i.value.1))?,
                        labels: i.metric,
                    })
                })
                .collect()
        }
        "scalar" => {
            let (_, v): (f64, String) = serde_json::from_value(data.result).map_err(|e| e.to_string())?;
            Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: value(&v).ok_or_else(|| format!("scalar value {v:?}"))?,
            }])
        }
        other => Err(format!("a {other} result (an instant vector or scalar was expected)")),
    }
}

impl PrometheusConfig {
    /// The samples of the instant query `expr`.
    pub async fn query(&self, expr: &str) -> Result<Vec<Sample>, PromError> {
        let cfg = self.clone();
        let expr = expr.to_owned();
        let url = self.url.clone();
        let err = |message: String| PromError::Query {
            url: url.clone(),
            message,
        };
        let res = tokio::task::spawn_blocking(move || {
            let mut c = ClientConfig::new(cfg.url.clone(), None);
            c.timeout = cfg.timeout;
            let client = Client::new(c).map_err(|e| e.to_string())?;
            client
                .get::<Response>(&format!("/api/v1/query?query={}", encode_segment(&expr)))
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| err(format!("query task: {e}")))?
        .map_err(err)?;
        samples(res).map_err(|m| PromError::Query {
            url: self.url.clone(),
            message: m,
        })
    }
}

/// Whether `sample op value` holds.
pub fn compare(sample: f64, op: CompareOp, value: f64) -> bool {
    match op {
        CompareOp::Lt => sample < value,
        CompareOp::Le => sample <= value,
        CompareOp::Eq => sample == value,
        CompareOp::Ne => sample != value,
        CompareOp::Ge => sample >= value,
        CompareOp::Gt => sample > value,
    }
}

/// `ALERTS{alertname="NAME",alertstate="firing"}`, with the name escaped.
pub fn firing_alert(name: &str) -> String {
    let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
    format!("ALERTS{{alertname=\"{escaped}\",alertstate=\"firing\"}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Sample>, String> {
        samples(serde_json::from_str(text).expect("json"))
    }

    #[test]
    fn vectors_scalars_and_errors_are_read_as_prometheus_writes_them() {
        let v = parse(
            r#"{"status":"success","data":{"resultType":"vector","result":[
                {"metric":{"job":"a"},"value":[1700000000.1,"2"]},{"metric":{},"value":[1700000000.1,"+Inf"]}]}}"#,
        )
        .expect("vector");
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].labels["job"], "a");
        assert_eq!(v[0].value, 2.0);
        assert!(v[1].value.is_infinite());
        let s = parse(r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"0.25"]}}"#).expect("scalar");
        assert_eq!(s[0].value, 0.25);
        let e =
            parse(r#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#).expect_err("error");
        assert!(e.contains("parse error"), "{e}");
        let m = parse(r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#).expect_err("matrix");
        assert!(m.contains("matrix"), "{m}");
    }

    #[test]
    fn comparisons_and_the_alerts_query() {
        assert!(compare(1.0, CompareOp::Gt, 0.0));
        assert!(!compare(0.0, CompareOp::Gt, 0.0));
        assert!(compare(0.0, CompareOp::Ge, 0.0));
        assert!(compare(f64::NAN, CompareOp::Ne, 1.0));
        assert_eq!(
            firing_alert(r#"A"b"#),
            r#"ALERTS{alertname="A\"b",alertstate="firing"}"#
        );
    }
}
