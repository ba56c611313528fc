//! The hand-written netem TCA_OPTIONS encoding (agent/src/faults/netem.rs):
//! `struct tc_netem_qopt` then TCA_NETEM_* netlink attributes, built from a
//! `NetemSpec` made of the input's bytes (any f64, any option), kept only
//! when `.validate()` accepts it, as the agent does.
//!
//! Asserts, decoding the payload as the kernel would (`parse_attr(...,
//! sizeof(struct tc_netem_qopt))`): the qopt carries the spec's limit; every
//! attribute is 4-byte aligned, fits the buffer and has a known type and its
//! struct's size; each attribute is present exactly when the spec asks for
//! it; probabilities are the spec's percentages on the u32 scale (0 and 100
//! exact); latency and jitter are the spec's in nanoseconds.
#![no_main]

use std::collections::BTreeMap;

use graydar_agent::faults::netem::{Loss, NetemEncode as _, NetemSpec};
use libfuzzer_sys::fuzz_target;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    /// Mostly small percentages and delays (so that specs validate), sometimes any f64.
    fn f64(&mut self) -> f64 {
        let [tag] = self.take::<1>();
        match tag % 4 {
            0 => 0.0,
            1 => f64::from(self.take::<1>()[0]) * 100.0 / 255.0,
            2 => f64::from(u16::from_le_bytes(self.take::<2>())) / 8.0,
            _ => f64::from_le_bytes(self.take::<8>()),
        }
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
}

fn spec(data: &[u8]) -> NetemSpec {
    let mut b = Bytes(data);
    let mut s = NetemSpec {
        delay_ms: b.f64(),
        jitter_ms: b.f64(),
        delay_correlation: b.f64(),
        duplicate: b.f64(),
        duplicate_correlation: b.f64(),
        corrupt: b.f64(),
        corrupt_correlation: b.f64(),
        reorder: b.f64(),
        reorder_correlation: b.f64(),
        ..NetemSpec::default()
    };
    s.loss = match b.u8() % 3 {
        0 => None,
        1 => Some(Loss::Random {
            percent: b.f64(),
            correlation: b.f64(),
        }),
        _ => Some(Loss::GilbertElliott {
            p: b.f64(),
            r: b.f64(),
            one_minus_h: b.f64(),
            one_minus_k: b.f64(),
        }),
    };
    if b.u8() % 2 == 1 {
        s.rate_bytes_per_sec = Some(u64::from_le_bytes(b.take::<8>()));
    }
    if b.u8() % 2 == 1 {
        s.limit = Some(u32::from_le_bytes(b.take::<4>()));
    }
    s
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
}

fn check_prob(what: &str, got: u32, percent: f64) {
    if percent <= 0.0 {
        assert_eq!(got, 0, "{what}");
    } else if percent >= 100.0 {
        assert_eq!(got, u32::MAX, "{what}");
    } else {
        let back = f64::from(got) / f64::from(u32::MAX) * 100.0;
        assert!((back - percent).abs() < 1e-6, "{what}: {percent}% encoded as {got}");
    }
}

fuzz_target!(|data: &[u8]| {
    let s = spec(data);
    if s.validate().is_err() {
        return;
    }
    let out = s.encode_options();
    // struct tc_netem_qopt { latency, limit, loss, gap, duplicate, jitter }.
    assert!(out.len() >= 24, "no qopt");
    assert_eq!(u32_at(&out, 0), 0);
    assert_eq!(u32_at(&out, 1), s.limit());
    assert!(s.limit() >= 1);
    assert_eq!(u32_at(&out, 3), 0);
    check_prob("duplicate", u32_at(&out, 4), s.duplicate);
    assert_eq!(u32_at(&out, 5), 0);
    match &s.loss {
        Some(Loss::Random { percent, .. }) => check_prob("loss", u32_at(&out, 2), *percent),
        _ => assert_eq!(u32_at(&out, 2), 0),
    }
    // The attributes, as the kernel's nla_parse walks them.
    let mut attrs = BTreeMap::new();
    let mut rest = &out[24..];
    while !rest.is_empty() {
        assert!(rest.len() >= 4, "truncated attribute header");
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]);
        assert!(
            len >= 4 && len <= rest.len(),
            "attribute {kind} of {len} bytes in {}",
            rest.len()
        );
        let aligned = len.div_ceil(4) * 4;
        assert!(aligned <= rest.len(), "attribute {kind} not padded");
        assert!(
            attrs.insert(kind, rest[4..len].to_vec()).is_none(),
            "attribute {kind} twice"
        );
        rest = &rest[aligned..];
    }
    const NESTED: u16 = 1 << 15;
    let expected_len = |kind: u16| match kind {
        1 => 12,                    // TCA_NETEM_CORR: struct tc_netem_corr
        3 | 4 => 8,                 // REORDER, CORRUPT: { probability, correlation }
        k if k == 5 | NESTED => 20, // LOSS: nested NETEM_LOSS_GE { p, r, h, k1 }
        6 => 16,                    // RATE: struct tc_netem_rate
        8 | 10 | 11 => 8,           // RATE64, LATENCY64, JITTER64
        k => panic!("unknown attribute {k}"),
    };
    for (kind, v) in &attrs {
        assert_eq!(v.len(), expected_len(*kind), "attribute {kind}");
    }
    let latency = std::time::Duration::from_secs_f64(s.delay_ms / 1000.0);
    let jitter = std::time::Duration::from_secs_f64(s.jitter_ms / 1000.0);
    let i64_of = |k: u16| attrs.get(&k).map(|v| i64::from_ne_bytes(v[..8].try_into().expect("8")));
    assert_eq!(i64_of(10), (!latency.is_zero()).then(|| latency.as_nanos() as i64));
    assert_eq!(i64_of(11), (!jitter.is_zero()).then(|| jitter.as_nanos() as i64));
    let loss_corr = match &s.loss {
        Some(Loss::Random { correlation, .. }) => *correlation,
        _ => 0.0,
    };
    // Present when a correlation is set; a loss correlation too small for
    // the u32 scale (rounds to 0) may leave it out.
    let corr = s.delay_correlation > 0.0 || loss_corr > 0.0 || s.duplicate_correlation > 0.0;
    let loss_corr_encodes = loss_corr / 100.0 * f64::from(u32::MAX) >= 0.5;
    if attrs.contains_key(&1) {
        assert!(corr, "TCA_NETEM_CORR without a correlation");
    } else {
        assert!(
            !(s.delay_correlation > 0.0 || s.duplicate_correlation > 0.0 || loss_corr_encodes),
            "no TCA_NETEM_CORR"
        );
    }
    if let Some(v) = attrs.get(&1) {
        check_prob("delay correlation", u32_at(v, 0), s.delay_correlation);
        check_prob("loss correlation", u32_at(v, 1), loss_corr);
        check_prob("duplicate correlation", u32_at(v, 2), s.duplicate_correlation);
    }
    assert_eq!(attrs.contains_key(&3), s.reorder > 0.0);
    if let Some(v) = attrs.get(&3) {
        check_prob("reorder", u32_at(v, 0), s.reorder);
        check_prob("reorder correlation", u32_at(v, 1), s.reorder_correlation);
    }
    assert_eq!(attrs.contains_key(&4), s.corrupt > 0.0);
    if let Some(v) = attrs.get(&4) {
        check_prob("corrupt", u32_at(v, 0), s.corrupt);
    }
    assert_eq!(
        attrs.contains_key(&(5 | NESTED)),
        matches!(s.loss, Some(Loss::GilbertElliott { .. }))
    );
    if let (
        Some(v),
        Some(Loss::GilbertElliott {
            p,
            r,
            one_minus_h,
            one_minus_k,
        }),
    ) = (attrs.get(&(5 | NESTED)), &s.loss)
    {
        assert_eq!(u16::from_ne_bytes([v[0], v[1]]), 20);
        assert_eq!(u16::from_ne_bytes([v[2], v[3]]), 2, "NETEM_LOSS_GE");
        let ge = &v[4..];
        for (i, (what, pct)) in [("p", p), ("r", r), ("1-h", one_minus_h), ("1-k", one_minus_k)]
            .into_iter()
            .enumerate()
        {
            check_prob(what, u32_at(ge, i), *pct);
        }
    }
    assert_eq!(attrs.contains_key(&6), s.rate_bytes_per_sec.is_some());
    if let (Some(v), Some(rate)) = (attrs.get(&6), s.rate_bytes_per_sec) {
        assert_eq!(u64::from(u32_at(v, 0)), rate.min(u64::from(u32::MAX)));
        let rate64 = attrs.get(&8).map(|v| u64::from_ne_bytes(v[..8].try_into().expect("8")));
        assert_eq!(rate64, (rate >= u64::from(u32::MAX)).then_some(rate));
    }
});
