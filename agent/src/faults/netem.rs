//! netem qdisc options, encoded by hand.
//!
//! netlink-packet-route has no typed netem support, and netem's TCA_OPTIONS
//! is not a plain attribute list: it is a `struct tc_netem_qopt` followed by
//! nested TCA_NETEM_* attributes (the kernel parses it with
//! `parse_attr(..., sizeof(struct tc_netem_qopt))`). This file builds exactly
//! that payload against linux/pkt_sched.h, and nothing else; the rest of the
//! qdisc message goes through netlink-packet-route.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What netem should do to matching packets. Percentages are 0..=100.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetemSpec {
    /// Added delay in milliseconds.
    #[serde(default)]
    pub delay_ms: f64,
    /// Random variation of the delay in milliseconds.
    #[serde(default)]
    pub jitter_ms: f64,
    /// Correlation of successive delays, percent.
    #[serde(default)]
    pub delay_correlation: f64,
    #[serde(default)]
    pub loss: Option<Loss>,
    /// Duplicate packets, percent.
    #[serde(default)]
    pub duplicate: f64,
    #[serde(default)]
    pub duplicate_correlation: f64,
    /// Corrupt one bit in packets, percent.
    #[serde(default)]
    pub corrupt: f64,
    #[serde(default)]
    pub corrupt_correlation: f64,
    /// Send this percentage of packets immediately (the rest delayed), which
    /// reorders them; needs a delay.
    #[serde(default)]
    pub reorder: f64,
    #[serde(default)]
    pub reorder_correlation: f64,
    /// Rate limit in bytes per second.
    #[serde(default)]
    pub rate_bytes_per_sec: Option<u64>,
    /// Queue limit in packets; default sized so rate × delay fits (see [`NetemSpec::limit`]).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Loss models of netem.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case", deny_unknown_fields)]
pub enum Loss {
    /// Independent (or correlated) random loss.
    Random {
        percent: f64,
        #[serde(default)]
        correlation: f64,
    },
    /// Gilbert-Elliott: p = P(good→bad), r = P(bad→good), loss in bad state
    /// `1 - h`, loss in good state `1 - k`; all percent.
    GilbertElliott {
        p: f64,
        r: f64,
        #[serde(default = "hundred")]
        one_minus_h: f64,
        #[serde(default)]
        one_minus_k: f64,
    },
}

fn hundred() -> f64 {
    100.0
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("netem: {0}")]
pub struct SpecError(pub String);

// linux/pkt_sched.h
const TCA_NETEM_CORR: u16 = 1;
const TCA_NETEM_REORDER: u16 = 3;
const TCA_NETEM_CORRUPT: u16 = 4;
const TCA_NETEM_LOSS: u16 = 5;
const TCA_NETEM_RATE: u16 = 6;
const TCA_NETEM_RATE64: u16 = 8;
const TCA_NETEM_LATENCY64: u16 = 10;
const TCA_NETEM_JITTER64: u16 = 11;
const NETEM_LOSS_GE: u16 = 2;
const NLA_F_NESTED: u16 = 1 << 15;
/// netem's own default limit (sch_netem.c: `q->limit = 1000` in tc's default).
const DEFAULT_LIMIT: u32 = 1000;

impl NetemSpec {
    pub fn validate(&self) -> Result<(), SpecError> {
        let pct = |name: &str, v: f64| {
            if v.is_finite() && (0.0..=100.0).contains(&v) {
                Ok(())
            } else {
                Err(SpecError(format!(
                    "{name} must be a percentage between 0 and 100, got {v}"
                )))
            }
        };
        for (name, v) in [("delay_ms", self.delay_ms), ("jitter_ms", self.jitter_ms)] {
            if !v.is_finite() || v < 0.0 {
                return Err(SpecError(format!("{name} must be a duration >= 0 ms, got {v}")));
            }
            if v > 3_600_000.0 {
                return Err(SpecError(format!("{name} {v} ms is more than an hour")));
            }
        }
        if self.jitter_ms > self.delay_ms && self.delay_ms > 0.0 {
            return Err(SpecError(format!(
                "jitter_ms ({}) larger than delay_ms ({}) would need negative delays",
                self.jitter_ms, self.delay_ms
            )));
        }
        pct("delay_correlation", self.delay_correlation)?;
        pct("duplicate", self.duplicate)?;
        pct("duplicate_correlation", self.duplicate_correlation)?;
        pct("corrupt", self.corrupt)?;
        pct("corrupt_correlation", self.corrupt_correlation)?;
        pct("reorder", self.reorder)?;
        pct("reorder_correlation", self.reorder_correlation)?;
        match &self.loss {
            Some(Loss::Random { percent, correlation }) => {
                pct("loss.percent", *percent)?;
                pct("loss.correlation", *correlation)?;
            }
            Some(Loss::GilbertElliott {
                p,
                r,
                one_minus_h,
                one_minus_k,
            }) => {
                pct("loss.p", *p)?;
                pct("loss.r", *r)?;
                pct("loss.one_minus_h", *one_minus_h)?;
                pct("loss.one_minus_k", *one_minus_k)?;
            }
            None => {}
        }
        if self.reorder > 0.0 && self.delay_ms == 0.0 {
            return Err(SpecError(
                "reorder needs a delay (packets not reordered are delayed)".into(),
            ));
        }
        if self.rate_bytes_per_sec == Some(0) {
            return Err(SpecError("rate_bytes_per_sec must be > 0".into()));
        }
        if self.limit == Some(0) {
            return Err(SpecError("limit must be at least 1 packet".into()));
        }
        if self == &NetemSpec::default() {
            return Err(SpecError(
                "the spec does nothing: set a delay, loss, duplicate, corrupt, reorder or rate".into(),
            ));
        }
        Ok(())
    }

    /// Queue limit in packets. netem holds every delayed packet in its queue,
    /// so a limit below rate × delay would itself drop packets and add loss
    /// nobody asked for. Without a rate, assume a 10 Gbit/s link of 1500-byte
    /// packets at the full delay plus jitter, with 2x headroom; never below
    /// netem's default of 1000.
    pub fn limit(&self) -> u32 {
        if let Some(l) = self.limit {
            return l;
        }
        let delay_s = (self.delay_ms + self.jitter_ms) / 1000.0;
        let bytes_per_s = self.rate_bytes_per_sec.map(|r| r as f64).unwrap_or(10e9 / 8.0);
        let packets = bytes_per_s * delay_s / 1500.0 * 2.0;
        (packets.ceil() as u64).clamp(u64::from(DEFAULT_LIMIT), 1_000_000) as u32
    }

    /// The TCA_OPTIONS payload: `struct tc_netem_qopt` then TCA_NETEM_* attributes.
    pub fn encode_options(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        let latency = Duration::from_secs_f64(self.delay_ms / 1000.0);
        let jitter = Duration::from_secs_f64(self.jitter_ms / 1000.0);
        let random_loss = match &self.loss {
            Some(Loss::Random { percent, .. }) => prob(*percent),
            _ => 0,
        };
        // struct tc_netem_qopt: latency and jitter are in psched ticks there;
        // the 64-bit nanosecond attributes below override them, so 0 here.
        for v in [0u32, self.limit(), random_loss, 0, prob(self.duplicate), 0] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        let loss_corr = match &self.loss {
            Some(Loss::Random { correlation, .. }) => prob(*correlation),
            _ => 0,
        };
        if self.delay_correlation > 0.0 || loss_corr > 0 || self.duplicate_correlation > 0.0 {
            let mut b = Vec::new();
            for v in [
                prob(self.delay_correlation),
                loss_corr,
                prob(self.duplicate_correlation),
            ] {
                b.extend_from_slice(&v.to_ne_bytes());
            }
            nla(&mut out, TCA_NETEM_CORR, &b);
        }
        if self.reorder > 0.0 {
            nla(
                &mut out,
                TCA_NETEM_REORDER,
                &pair(prob(self.reorder), prob(self.reorder_correlation)),
            );
        }
        if self.corrupt > 0.0 {
            nla(
                &mut out,
                TCA_NETEM_CORRUPT,
                &pair(prob(self.corrupt), prob(self.corrupt_correlation)),
            );
        }
        if let Some(Loss::GilbertElliott {
            p,
            r,
            one_minus_h,
            one_minus_k,
        }) = &self.loss
        {
            // struct tc_netem_gemodel { p, r, h, k1 } inside a nested TCA_NETEM_LOSS.
            let mut ge = Vec::new();
            for v in [prob(*p), prob(*r), prob(*one_minus_h), prob(*one_minus_k)] {
                ge.extend_from_slice(&v.to_ne_bytes());
            }
            let mut nested = Vec::new();
            nla(&mut nested, NETEM_LOSS_GE, &ge);
            nla(&mut out, TCA_NETEM_LOSS | NLA_F_NESTED, &nested);
        }
        if let Some(rate) = self.rate_bytes_per_sec {
            // struct tc_netem_rate { rate (u32, bytes/s), packet_overhead, cell_size, cell_overhead }
            let mut b = Vec::new();
            b.extend_from_slice(&(rate.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
            b.extend_from_slice(&[0u8; 12]);
            nla(&mut out, TCA_NETEM_RATE, &b);
            if rate >= u64::from(u32::MAX) {
                nla(&mut out, TCA_NETEM_RATE64, &rate.to_ne_bytes());
            }
        }
        if !latency.is_zero() {
            nla(
                &mut out,
                TCA_NETEM_LATENCY64,
                &(latency.as_nanos() as i64).to_ne_bytes(),
            );
        }
        if !jitter.is_zero() {
            nla(&mut out, TCA_NETEM_JITTER64, &(jitter.as_nanos() as i64).to_ne_bytes());
        }
        out
    }

    /// tc-like one-line rendering, for describe/dry-run and logs.
    pub fn describe(&self) -> String {
        let mut s = format!("netem limit {}", self.limit());
        if self.delay_ms > 0.0 {
            let _ = write!(s, " delay {}ms", self.delay_ms);
            if self.jitter_ms > 0.0 {
                let _ = write!(s, " {}ms", self.jitter_ms);
            }
            if self.delay_correlation > 0.0 {
                let _ = write!(s, " {}%", self.delay_correlation);
            }
        }
        match &self.loss {
            Some(Loss::Random { percent, correlation }) => {
                let _ = write!(s, " loss random {percent}%");
                if *correlation > 0.0 {
                    let _ = write!(s, " {correlation}%");
                }
            }
            Some(Loss::GilbertElliott {
                p,
                r,
                one_minus_h,
                one_minus_k,
            }) => {
                let _ = write!(s, " loss gemodel {p}% {r}% {one_minus_h}% {one_minus_k}%");
            }
            None => {}
        }
        for (name, v, c) in [
            ("duplicate", self.duplicate, self.duplicate_correlation),
            ("corrupt", self.corrupt, self.corrupt_correlation),
            ("reorder", self.reorder, self.reorder_correlation),
        ] {
            if v > 0.0 {
                let _ = write!(s, " {name} {v}%");
                if c > 0.0 {
                    let _ = write!(s, " {c}%");
                }
            }
        }
        if let Some(r) = self.rate_bytes_per_sec {
            let _ = write!(s, " rate {}bit", r.saturating_mul(8));
        }
        s
    }
}

/// Percent → the kernel's u32 probability scale (0 = never, u32::MAX = always).
fn prob(percent: f64) -> u32 {
    if percent <= 0.0 {
        0
    } else if percent >= 100.0 {
        u32::MAX
    } else {
        (percent / 100.0 * f64::from(u32::MAX)).round() as u32
    }
}

fn pair(a: u32, b: u32) -> Vec<u8> {
    let mut v = a.to_ne_bytes().to_vec();
    v.extend_from_slice(&b.to_ne_bytes());
    v
}

/// Appends one netlink attribute (struct nlattr + payload, 4-byte aligned).
fn nla(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = (4 + payload.len()) as u16;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
    }

    /// Walks the attributes after the 24-byte qopt: (type, payload).
    fn attrs(b: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = 24;
        while i + 4 <= b.len() {
            let len = u16::from_ne_bytes([b[i], b[i + 1]]) as usize;
            let kind = u16::from_ne_bytes([b[i + 2], b[i + 3]]);
            out.push((kind, b[i + 4..i + len].to_vec()));
            i += (len + 3) & !3;
        }
        out
    }

    #[test]
    fn delay_and_loss_encode_as_the_kernel_expects() {
        let s = NetemSpec {
            delay_ms: 100.0,
            jitter_ms: 10.0,
            loss: Some(Loss::Random {
                percent: 10.0,
                correlation: 0.0,
            }),
            ..Default::default()
        };
        s.validate().expect("valid");
        let b = s.encode_options();
        assert_eq!(u32_at(&b, 0), 0, "qopt.latency unused (LATENCY64 overrides)");
        assert_eq!(u32_at(&b, 4), s.limit());
        assert_eq!(u32_at(&b, 8), 429_496_730, "10 % of u32::MAX");
        let a = attrs(&b);
        assert_eq!(a.len(), 2, "{a:?}");
        assert_eq!(a[0].0, TCA_NETEM_LATENCY64);
        assert_eq!(
            i64::from_ne_bytes(a[0].1.clone().try_into().expect("8 bytes")),
            100_000_000
        );
        assert_eq!(a[1].0, TCA_NETEM_JITTER64);
        assert_eq!(
            i64::from_ne_bytes(a[1].1.clone().try_into().expect("8 bytes")),
            10_000_000
        );
    }

    #[test]
    fn gilbert_elliott_loss_is_a_nested_gemodel() {
        let s = NetemSpec {
            loss: Some(Loss::GilbertElliott {
                p: 1.0,
                r: 25.0,
                one_minus_h: 100.0,
                one_minus_k: 0.0,
            }),
            ..Default::default()
        };
        s.validate().expect("valid");
        let a = attrs(&s.encode_options());
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0, TCA_NETEM_LOSS | NLA_F_NESTED);
        let inner = &a[0].1;
        assert_eq!(u16::from_ne_bytes([inner[2], inner[3]]), NETEM_LOSS_GE);
        assert_eq!(u16::from_ne_bytes([inner[0], inner[1]]), 4 + 16);
        assert_eq!(u32_at(inner, 4), prob(1.0));
        assert_eq!(u32_at(inner, 8), prob(25.0));
        assert_eq!(u32_at(inner, 12), u32::MAX);
        assert_eq!(u32_at(inner, 16), 0);
    }

    #[test]
    fn correlation_reorder_corrupt_and_rate_are_encoded() {
        let s = NetemSpec {
            delay_ms: 10.0,
            delay_correlation: 25.0,
            reorder: 25.0,
            reorder_correlation: 50.0,
            corrupt: 0.1,
            rate_bytes_per_sec: Some(125_000),
            ..Default::default()
        };
        s.validate().expect("valid");
        let kinds: Vec<u16> = attrs(&s.encode_options()).iter().map(|a| a.0).collect();
        assert_eq!(
            kinds,
            vec![
                TCA_NETEM_CORR,
                TCA_NETEM_REORDER,
                TCA_NETEM_CORRUPT,
                TCA_NETEM_RATE,
                TCA_NETEM_LATENCY64
            ]
        );
        assert_eq!(
            s.describe(),
            "netem limit 1000 delay 10ms 25% corrupt 0.1% reorder 25% 50% rate 1000000bit"
        );
    }

    #[test]
    fn limit_fits_rate_times_delay() {
        // 1 Gbit/s for 500 ms = 62.5 MB = 41 667 full-size packets; 2x headroom.
        let s = NetemSpec {
            delay_ms: 500.0,
            rate_bytes_per_sec: Some(125_000_000),
            ..Default::default()
        };
        assert_eq!(s.limit(), 83_334);
        // No rate: assume 10 Gbit/s. 1 ms holds 833 full-size packets, 2x headroom.
        assert_eq!(
            NetemSpec {
                delay_ms: 1.0,
                ..Default::default()
            }
            .limit(),
            1667
        );
        assert_eq!(
            NetemSpec {
                delay_ms: 0.1,
                ..Default::default()
            }
            .limit(),
            1000,
            "netem's default is the floor"
        );
        assert_eq!(
            NetemSpec {
                delay_ms: 1.0,
                limit: Some(7),
                ..Default::default()
            }
            .limit(),
            7
        );
    }

    #[test]
    fn invalid_specs_say_what_is_wrong() {
        let cases = [
            (
                NetemSpec {
                    delay_ms: -5.0,
                    ..Default::default()
                },
                "delay_ms",
            ),
            (
                NetemSpec {
                    loss: Some(Loss::Random {
                        percent: 150.0,
                        correlation: 0.0,
                    }),
                    ..Default::default()
                },
                "loss.percent",
            ),
            (
                NetemSpec {
                    delay_ms: 10.0,
                    jitter_ms: 20.0,
                    ..Default::default()
                },
                "jitter_ms",
            ),
            (
                NetemSpec {
                    reorder: 10.0,
                    ..Default::default()
                },
                "reorder needs a delay",
            ),
            (NetemSpec::default(), "does nothing"),
            (
                NetemSpec {
                    delay_ms: f64::NAN,
                    ..Default::default()
                },
                "delay_ms",
            ),
        ];
        for (spec, needle) in cases {
            let err = spec.validate().expect_err("must be rejected");
            assert!(err.to_string().contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn specs_parse_from_json_and_reject_unknown_fields() {
        let s: NetemSpec =
            serde_json::from_str(r#"{"delay_ms": 100, "loss": {"model": "random", "percent": 5}}"#).expect("parse");
        assert_eq!(
            s.loss,
            Some(Loss::Random {
                percent: 5.0,
                correlation: 0.0
            })
        );
        assert!(serde_json::from_str::<NetemSpec>(r#"{"delay": 100}"#).is_err());
    }
}
