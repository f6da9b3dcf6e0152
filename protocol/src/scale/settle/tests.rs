use super::*;
use proptest::prelude::*;

fn w(stable: bool, kg: &str) -> ScaleReading {
    ScaleReading::Weight {
        stable,
        mode: WeightMode::Gross,
        weight: kg.into(),
        unit: "kg".into(),
        weight_kg: Some(kg.into()),
        tare_kg: None,
    }
}

fn settler() -> Settler {
    Settler::new(SettleConfig::default())
}

/// Feeds readings 100 ms apart starting at `t0`; returns the outputs with their times.
fn run(s: &mut Settler, t0: u64, readings: &[ScaleReading]) -> Vec<(u64, SettleOutput)> {
    readings
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let t = t0 + 100 * i as u64;
            s.feed(t, r).map(|o| (t, o))
        })
        .collect()
}

fn weight(kg: &str) -> SettleOutput {
    SettleOutput::Weight {
        weight_kg: kg.into(),
        mode: WeightMode::Gross,
        tare_kg: None,
        unit: "kg".into(),
    }
}

fn reason(o: &SettleOutput) -> Option<ExceptionReason> {
    match o {
        SettleOutput::Exception { reason, .. } => Some(*reason),
        SettleOutput::Weight { .. } => None,
    }
}

#[test]
fn one_weight_per_item_after_the_stability_flag_held_for_settle() {
    let mut s = settler();
    let item = [
        w(true, "0"),
        w(false, "3.2"),
        w(false, "5.01"),
        w(true, "5"),
        w(true, "5"),
        w(true, "5"),
        w(true, "5"),
        w(true, "5"),
        w(true, "5"),
    ];
    // Stable from t=300; held 300 ms at t=600.
    assert_eq!(run(&mut s, 0, &item), vec![(600, weight("5"))]);
    // Still on the scale: nothing more, even much later.
    assert_eq!(run(&mut s, 1000, &[w(true, "5"), w(false, "5.2")]), vec![]);
    assert_eq!(s.tick(60_000), None);
    // Removed, then the next item.
    assert_eq!(run(&mut s, 70_000, &[w(true, "0.01")]), vec![]);
    assert_eq!(
        run(
            &mut s,
            80_000,
            &[
                w(true, "2.5"),
                w(true, "2.5"),
                w(true, "2.5"),
                w(true, "2.5")
            ]
        ),
        vec![(80_300, weight("2.5"))]
    );
}

#[test]
fn a_change_of_value_or_motion_restarts_the_settle_clock() {
    let mut s = settler();
    let readings = [
        w(true, "5"),
        w(true, "5"),
        w(true, "5.1"),
        w(true, "5.1"),
        w(false, "5.1"),
        w(true, "5.1"),
        w(true, "5.1"),
        w(true, "5.1"),
        w(true, "5.1"),
    ];
    assert_eq!(run(&mut s, 0, &readings), vec![(800, weight("5.1"))]);
}

#[test]
fn the_same_value_written_differently_is_the_same_value() {
    let mut s = settler();
    let out = run(
        &mut s,
        0,
        &[w(true, "5.0"), w(true, "5"), w(true, "5.00"), w(true, "5")],
    );
    assert_eq!(out, vec![(300, weight("5"))]);
}

#[test]
fn nothing_below_min_kg_is_ever_a_weight() {
    let mut s = settler();
    let out = run(&mut s, 0, &vec![w(true, "0.049"); 200]);
    assert_eq!(out, vec![]);
    assert_eq!(s.tick(100_000), None);
    let mut s = settler();
    let out = run(&mut s, 0, &vec![w(true, "0.05"); 5]);
    assert_eq!(out, vec![(300, weight("0.05"))]);
}

#[test]
fn an_item_that_never_settles_gives_one_unstable_weight_then_waits_for_removal() {
    let mut s = settler();
    let moving: Vec<_> = (0..150)
        .map(|i| w(i % 2 == 0, if i % 2 == 0 { "7.1" } else { "7.3" }))
        .collect();
    let out = run(&mut s, 0, &moving);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, 10_000);
    assert_eq!(reason(&out[0].1), Some(ExceptionReason::UnstableWeight));
    let SettleOutput::Exception { detail, .. } = &out[0].1 else {
        unreachable!()
    };
    assert!(
        detail.contains("10000 ms") && detail.contains("7.1 kg"),
        "{detail}"
    );
    // It finally settles: still nothing until it is taken off.
    assert_eq!(run(&mut s, 20_000, &vec![w(true, "7.2"); 10]), vec![]);
    assert_eq!(
        run(
            &mut s,
            30_000,
            &[
                w(true, "0"),
                w(true, "7.2"),
                w(true, "7.2"),
                w(true, "7.2"),
                w(true, "7.2")
            ]
        ),
        vec![(30_400, weight("7.2"))]
    );
}

#[test]
fn tick_settles_or_times_out_when_frames_stop() {
    let mut s = settler();
    assert_eq!(s.feed(0, &w(true, "4")), None);
    assert_eq!(s.tick(299), None);
    assert_eq!(s.tick(300), Some(weight("4")));
    assert_eq!(s.tick(301), None);

    let mut s = settler();
    assert_eq!(s.feed(0, &w(false, "4")), None);
    assert_eq!(s.tick(9_999), None);
    assert_eq!(
        s.tick(10_000).as_ref().and_then(reason),
        Some(ExceptionReason::UnstableWeight)
    );
    assert_eq!(s.tick(20_000), None);
}

#[test]
fn overload_is_one_exception_per_episode_and_the_item_can_still_settle() {
    let mut s = settler();
    let mut readings = vec![ScaleReading::Overload; 20];
    readings.extend([w(false, "31"), ScaleReading::Overload, w(true, "29.5")]);
    readings.extend(vec![w(true, "29.5"); 4]);
    let out = run(&mut s, 0, &readings);
    let reasons: Vec<_> = out.iter().map(|(_, o)| reason(o)).collect();
    assert_eq!(
        reasons,
        vec![Some(ExceptionReason::Overload), None],
        "{out:?}"
    );
    // No unstable_weight on top for an item that had a fault, however long it takes.
    let mut s = settler();
    let mut readings = vec![w(false, "31"), ScaleReading::Overload];
    readings.extend(vec![w(false, "31"); 200]);
    let out = run(&mut s, 0, &readings);
    assert_eq!(out.len(), 1, "{out:?}");
    // Cleared: the next overload is a new episode.
    let out = run(&mut s, 50_000, &[w(true, "0"), ScaleReading::Overload]);
    assert_eq!(
        out.iter().map(|(_, o)| reason(o)).collect::<Vec<_>>(),
        vec![Some(ExceptionReason::Overload)]
    );
}

#[test]
fn underload_is_one_exception_per_episode_and_re_arms() {
    let mut s = settler();
    let mut readings = vec![w(true, "3"); 4];
    readings.extend([
        ScaleReading::Underload,
        w(false, "-0.2"),
        ScaleReading::Underload,
    ]);
    readings.extend(vec![w(true, "3"); 4]);
    let out = run(&mut s, 0, &readings);
    let reasons: Vec<_> = out.iter().map(|(_, o)| reason(o)).collect();
    assert_eq!(
        reasons,
        vec![None, Some(ExceptionReason::Underload), None],
        "{out:?}"
    );
    // A stable reading at zero or more ends the episode.
    let out = run(&mut s, 10_000, &[w(true, "0"), ScaleReading::Underload]);
    assert_eq!(out.len(), 1);
}

#[test]
fn scale_errors_once_per_episode_and_busy_is_ignored() {
    let mut s = settler();
    let err = ScaleReading::Error("syntax error: …".into());
    let out = run(
        &mut s,
        0,
        &[
            err.clone(),
            err.clone(),
            ScaleReading::Busy,
            err.clone(),
            w(true, "0"),
            err,
        ],
    );
    let reasons: Vec<_> = out.iter().map(|(_, o)| reason(o)).collect();
    assert_eq!(
        reasons,
        vec![
            Some(ExceptionReason::ScaleError),
            Some(ExceptionReason::ScaleError)
        ]
    );
    let mut s = settler();
    let out = run(
        &mut s,
        0,
        &[
            w(true, "1"),
            ScaleReading::Busy,
            ScaleReading::Busy,
            ScaleReading::Busy,
        ],
    );
    assert_eq!(
        out,
        vec![(300, weight("1"))],
        "busy does not stop the clock"
    );
}

#[test]
fn a_unit_without_a_kg_conversion_is_reported_once() {
    let mut s = settler();
    let pcs = ScaleReading::Weight {
        stable: true,
        mode: WeightMode::Gross,
        weight: "12".into(),
        unit: "PC".into(),
        weight_kg: None,
        tare_kg: None,
    };
    let out = run(&mut s, 0, &vec![pcs; 10]);
    assert_eq!(out.len(), 1);
    let SettleOutput::Exception { reason, detail } = &out[0].1 else {
        unreachable!()
    };
    assert_eq!(*reason, ExceptionReason::ScaleError);
    assert!(detail.contains("\"PC\""), "{detail}");
}

#[test]
fn zero_settle_time_emits_on_the_first_stable_frame() {
    let mut s = Settler::new(SettleConfig {
        settle_ms: 0,
        ..SettleConfig::default()
    });
    assert_eq!(s.feed(5, &w(true, "1.25")), Some(weight("1.25")));
}

#[test]
fn net_weights_carry_their_tare() {
    let mut s = settler();
    let net = ScaleReading::Weight {
        stable: true,
        mode: WeightMode::Net,
        weight: "10.00".into(),
        unit: "kg".into(),
        weight_kg: Some("10".into()),
        tare_kg: Some("2.34".into()),
    };
    let out = run(&mut s, 0, &vec![net; 4]);
    assert_eq!(
        out,
        vec![(
            300,
            SettleOutput::Weight {
                weight_kg: "10".into(),
                mode: WeightMode::Net,
                tare_kg: Some("2.34".into()),
                unit: "kg".into()
            }
        )]
    );
}

/// One step of a random scale session.
#[derive(Debug, Clone)]
enum Step {
    Feed(ScaleReading),
    Tick,
}

fn step() -> impl Strategy<Value = Step> {
    let kg = prop_oneof![
        Just("0"),
        Just("0.01"),
        Just("0.049"),
        Just("0.05"),
        Just("0.051"),
        Just("1"),
        Just("2.5"),
        Just("-0.3"),
        Just("30"),
    ];
    prop_oneof![
        6 => (any::<bool>(), kg, any::<bool>()).prop_map(|(stable, kg, net)| Step::Feed(ScaleReading::Weight {
            stable,
            mode: if net { WeightMode::Net } else { WeightMode::Gross },
            weight: kg.into(),
            unit: "kg".into(),
            weight_kg: Some(kg.into()),
            tare_kg: None,
        })),
        1 => Just(Step::Feed(ScaleReading::Overload)),
        1 => Just(Step::Feed(ScaleReading::Underload)),
        1 => Just(Step::Feed(ScaleReading::Busy)),
        1 => Just(Step::Feed(ScaleReading::Error("x".into()))),
        1 => Just(Step::Feed(ScaleReading::Weight {
            stable: true,
            mode: WeightMode::Gross,
            weight: "3".into(),
            unit: "PC".into(),
            weight_kg: None,
            tare_kg: None,
        })),
        2 => Just(Step::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn at_most_one_weight_per_item_never_below_min_never_a_panic(
        steps in proptest::collection::vec((0u64..2_000, step()), 0..300),
        settle_ms in 0u64..1_000,
        timeout in 0u64..20_000,
    ) {
        let cfg = SettleConfig { settle_ms, min_kg: Decimal::new(5, 2), settle_timeout_ms: timeout };
        let min = cfg.min_kg;
        let mut s = Settler::new(cfg);
        let mut now = 0u64;
        // Outcomes (weight or unstable_weight) since the last re-arm.
        let mut outcomes = 0;
        let mut overloads = 0;
        for (dt, step) in steps {
            now += dt;
            let out = match &step {
                Step::Feed(r) => s.feed(now, r),
                Step::Tick => s.tick(now),
            };
            if let Step::Feed(ScaleReading::Weight { weight_kg: Some(k), .. }) = &step {
                let k = Decimal::parse(k).unwrap_or(Decimal::ZERO);
                if k < min {
                    outcomes = 0;
                    overloads = 0;
                }
            }
            if let Step::Feed(ScaleReading::Underload) = &step {
                outcomes = 0;
            }
            match out {
                Some(SettleOutput::Weight { weight_kg, .. }) => {
                    let k = Decimal::parse(&weight_kg).unwrap_or(Decimal::ZERO);
                    prop_assert!(k >= min, "weight {} below min", weight_kg);
                    outcomes += 1;
                    if let Step::Feed(ScaleReading::Weight { weight_kg: Some(fed), stable, .. }) = &step {
                        prop_assert!(*stable);
                        prop_assert_eq!(fed, &weight_kg);
                    }
                }
                Some(SettleOutput::Exception { reason: ExceptionReason::UnstableWeight, .. }) => outcomes += 1,
                Some(SettleOutput::Exception { reason: ExceptionReason::Overload, .. }) => overloads += 1,
                Some(SettleOutput::Exception { reason, .. }) => {
                    // Another fault: a new overload episode may start after it.
                    prop_assert!(matches!(reason, ExceptionReason::Underload | ExceptionReason::ScaleError));
                    overloads = 0;
                }
                None => {}
            }
            prop_assert!(outcomes <= 1, "two outcomes for one item");
            prop_assert!(overloads <= 1, "two overload exceptions in one episode");
        }
    }
}

#[test]
fn outputs_become_canonical_bodies() {
    let body = weight("5").into_body(Some("106141412345678908".into()));
    let json = serde_json::to_value(&body).unwrap_or_default();
    assert_eq!(
        json,
        serde_json::json!({"weight_kg": "5", "mode": "gross", "tare_kg": null, "unit": "kg", "sscc": "106141412345678908"})
    );
    let body = SettleOutput::Exception {
        reason: ExceptionReason::Overload,
        detail: "x".into(),
    }
    .into_body(None);
    assert_eq!(body.kind(), crate::Kind::Exception);
}

#[test]
fn a_streaming_toledo_scale_and_a_scan_give_one_weight_carrying_the_sscc() {
    use crate::correlate::Correlator;
    use crate::framing::Framed;
    use crate::scale::toledo::{self, checksum, Checksum, ToledoFramer};

    // SWA ',' (two decimals), SWB '0' gross kg stable / '8' gross kg in motion.
    let frame = |swb: u8, weight: &str| {
        let mut f = vec![0x02, b',', swb, b' '];
        f.extend_from_slice(weight.as_bytes());
        f.extend_from_slice(b"000000\r");
        f.push(checksum(&f));
        f
    };
    let mut timeline = Vec::new();
    timeline.extend((0..10).map(|_| frame(b'0', "000000")));
    timeline.extend((0..10).map(|i| frame(b'8', if i % 2 == 0 { "000800" } else { "001900" })));
    timeline.extend((0..20).map(|_| frame(b'0', "001234")));
    timeline.extend((0..10).map(|_| frame(b'0', "000000")));

    let mut correlator = Correlator::new();
    correlator.record_scan("weigh-01", "106141412345678908", 300);
    let mut framer = ToledoFramer::new(4096, Checksum::Always);
    let mut settler = Settler::new(SettleConfig::default());
    let mut bodies = Vec::new();
    // 20 frames per second, delivered in reads of arbitrary size.
    let stream: Vec<u8> = timeline.concat();
    let mut now = 0;
    for chunk in stream.chunks(7) {
        framer.push(chunk);
        while let Some(Framed::Frame(f)) = framer.next_frame() {
            now += 50;
            let reading = toledo::parse(&f).unwrap_or(ScaleReading::Busy);
            if let Some(out) = settler.feed(now, &reading) {
                let sscc = correlator.sscc_for_weight("weigh-01", now, 10_000);
                bodies.push(out.into_body(sscc));
            }
        }
    }
    assert_eq!(now, 50 * 50, "every frame decoded");
    assert_eq!(
        bodies,
        vec![Body::ShipmentWeight(ShipmentWeight {
            weight_kg: "12.34".into(),
            mode: WeightMode::Gross,
            tare_kg: Some("0".into()),
            unit: "kg".into(),
            sscc: Some("106141412345678908".into()),
        })]
    );
}
