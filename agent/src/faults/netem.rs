//! netem qdisc options, encoded by hand.
//!
//! netlink-packet-route has no typed netem support, and netem's TCA_OPTIONS
//! is not a plain attribute list: it is a `struct tc_netem_qopt` followed by
//! nested TCA_NETEM_* attributes (the kernel parses it with
//! `parse_attr(..., sizeof(struct tc_netem_qopt))`). This file builds exactly
//! that payload against linux/pkt_sched.h, and prio's (scoped faults, see
//! [`prio_options`]), and nothing else; the rest of the qdisc, filter and
//! action messages go through netlink-packet-route's types.

use std::time::Duration;

pub use graydar_common::faults::{Loss, NetemSpec, SpecError};

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
/// The kernel encoding of a [`NetemSpec`] (an extension trait: the spec
/// itself is a wire type in graydar-common).
pub trait NetemEncode {
    fn encode_options(&self) -> Vec<u8>;
}

impl NetemEncode for NetemSpec {
    /// The TCA_OPTIONS payload: `struct tc_netem_qopt` then TCA_NETEM_* attributes.
    fn encode_options(&self) -> Vec<u8> {
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
}

/// The TCA_OPTIONS payload of a `prio` qdisc: `struct tc_prio_qopt { int
/// bands; __u8 priomap[16]; }` (linux/pkt_sched.h), a bare struct like
/// netem's. netlink-packet-route has no typed prio either, so it is encoded
/// here with netem's, and nowhere else. Every priority maps to `default_band`
/// (0-based), so only filters send packets elsewhere.
pub fn prio_options(bands: u8, default_band: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(&i32::from(bands).to_ne_bytes());
    out.extend_from_slice(&[default_band; 16]);
    out
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
    fn prio_options_are_a_bare_tc_prio_qopt() {
        let b = prio_options(2, 1);
        assert_eq!(b.len(), 20);
        assert_eq!(u32_at(&b, 0), 2);
        assert!(b[4..].iter().all(|x| *x == 1));
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
