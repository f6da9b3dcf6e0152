use super::table::{Charset, Entry, Lint, TABLE};
use super::*;

fn err(data: &[u8]) -> String {
    match parse(data) {
        Ok(e) => panic!("{:?} parsed to {e:?}", String::from_utf8_lossy(data)),
        Err(e) => e.to_string(),
    }
}

fn pairs(e: &Elements) -> Vec<(&str, &str)> {
    e.0.iter().map(|(a, v)| (a.as_str(), v.as_str())).collect()
}

/// A valid value for an entry: its mandatory components, variable ones three long.
fn sample(e: &Entry) -> String {
    let mut out = String::new();
    for p in e.parts().iter().filter(|p| !p.optional) {
        let len = usize::from(if p.min == p.max { p.max } else { p.max.min(3) });
        let field = match p.lints[0] {
            Lint::Yymmd0 | Lint::Yymmdd => "250115".to_owned(),
            Lint::Yyyymmdd => "20250115".to_owned(),
            Lint::Hour => "12".to_owned(),
            Lint::HourMinute => "1230".to_owned(),
            Lint::Minute | Lint::Second => "30".to_owned(),
            Lint::PieceOfTotal => "0102".to_owned(),
            Lint::Zero => "0".to_owned(),
            Lint::CsumAlpha => {
                let head = "A".repeat(len - 2);
                let pair = check_pair(format!("{head}..").as_bytes()).unwrap_or_default();
                format!("{head}{}", String::from_utf8_lossy(&pair))
            }
            Lint::Csum => "0".repeat(len),
            _ => match p.set {
                Charset::Numeric => "1".repeat(len),
                _ => "A".repeat(len),
            },
        };
        assert_eq!(field.len(), len);
        out.push_str(&field);
    }
    out
}

/// The predefined-length prefixes, written out independently of the table module.
fn predefined(ai: &str) -> bool {
    let prefix: u8 = ai[..2].parse().unwrap_or(255);
    matches!(prefix, 0..=4 | 11..=20 | 31..=36 | 41)
}

#[test]
fn the_table_covers_every_ai_of_the_general_specifications() {
    let ais: Vec<String> = TABLE.iter().flat_map(Entry::ais).collect();
    assert_eq!(ais.len(), 541, "AIs tabled");
    for ai in [
        "00", "01", "02", "03", "10", "11", "12", "13", "15", "16", "17", "20", "21", "22", "235",
        "240", "241", "242", "243", "250", "251", "253", "254", "255", "30", "3100", "3105",
        "3695", "37", "3900", "3955", "400", "401", "402", "403", "410", "414", "417", "420",
        "427", "4300", "4333", "7001", "7041", "710", "717", "7230", "7239", "7240", "7259",
        "8001", "8030", "8110", "8111", "8112", "8200", "90", "91", "99",
    ] {
        assert!(ais.iter().any(|a| a == ai), "AI {ai} is missing");
    }
    for unknown in [
        "04", "14", "18", "19", "89", "3106", "3109", "3380", "3944", "3956", "404", "418", "428",
        "4334", "7012", "7042", "718", "7243", "8015", "8027", "8113", "8201",
    ] {
        assert!(
            !ais.iter().any(|a| a == unknown),
            "AI {unknown} does not exist"
        );
    }
}

#[test]
fn predefined_length_ais_need_no_separator_and_all_others_do() {
    for entry in TABLE {
        let value = sample(entry);
        for ai in entry.ais() {
            let alone = format!("{ai}{value}");
            let got = parse(alone.as_bytes()).map_err(|e| format!("{alone:?}: {e}"));
            assert_eq!(got, Ok(Elements(vec![(ai.clone(), value.clone())])));
            let bracketed = format!("({ai}){value}");
            assert_eq!(
                parse_bracketed(&bracketed).map(|e| e.0.len()),
                Ok(1),
                "{bracketed}"
            );

            let next = if ai == "90" { "91" } else { "90" };
            let two = Ok(vec![(ai.as_str(), value.as_str()), (next, "X")]);
            let joined = format!("{ai}{value}{next}X");
            let with_gs = format!("{ai}{value}\u{1d}{next}X");
            if predefined(&ai) {
                assert_eq!(
                    parse(joined.as_bytes()).as_ref().map(pairs),
                    two,
                    "{joined:?}"
                );
            } else {
                assert_ne!(
                    parse(joined.as_bytes()).as_ref().map(pairs),
                    two,
                    "{joined:?}"
                );
            }
            assert_eq!(
                parse(with_gs.as_bytes()).as_ref().map(pairs),
                two,
                "{with_gs:?}"
            );
        }
    }
}

#[test]
fn ai_402_is_fixed_length_but_needs_a_separator() {
    let with_gs = parse(b"40212345678901234560\x1d400PO-77");
    assert_eq!(
        with_gs.as_ref().map(pairs),
        Ok(vec![("402", "12345678901234560"), ("400", "PO-77")])
    );
    assert_eq!(
        err(b"40212345678901234560400PO-77"),
        "AI 402: 25 characters, needs 17"
    );
}

#[test]
fn faults_are_named_for_a_person() {
    let cases: &[(&[u8], &str)] = &[
        (
            b"00106141412345678907",
            "AI 00: check digit is 7, expected 8",
        ),
        (b"891234", "unknown AI 89"),
        (b"3106000123", "unknown AI 3106"),
        (b"0112345678901231\x1d7212AB", "unknown AI 7212"),
        (b"011234567890123", "AI 01: 13 digits, needs 14"),
        (b"0112345\x1d10A", "AI 01: 5 digits, needs 14"),
        (b"011234567890123A", "AI 01: character 'A' is not a digit"),
        (
            b"011231231231233317201330",
            "AI 17: month 13 is not a month",
        ),
        (b"17250229", "AI 17: day 29 does not exist in February 2025"),
        (b"17250431", "AI 17: day 31 does not exist in April 2025"),
        (b"10AB^C", "AI 10: character '^' is not allowed in GS1 data"),
        (b"10AB\x07C", "AI 10: byte 0x07 is not allowed in GS1 data"),
        (b"10AB C", "AI 10: character ' ' is not allowed in GS1 data"),
        (b"10ABC#", "AI 10: character '#' is not allowed in GS1 data"),
        (b"", "empty GS1 data"),
        (b"\x1d\x1d", "empty GS1 data"),
        (b"10\x1d21X", "AI 10: no data"),
        (
            b"10123456789012345678901",
            "AI 10: 21 digits, needs at most 20",
        ),
        (
            b"10ABCDEFGHIJKLMNOPQRSTU",
            "AI 10: 21 characters, needs at most 20",
        ),
        (b"70062501000", "AI 7006: 7 digits, needs 6"),
        (
            b"7006250100",
            "AI 7006: day 00 (last day of the month) is not allowed in this date",
        ),
        (b"70032501152400", "AI 7003: hour 24 is not an hour"),
        (b"70032501152360", "AI 7003: minute 60 is not a minute"),
        (b"70072501", "AI 7007: 4 digits, needs 6 or 12"),
        (b"8008250115123", "AI 8008: 9 digits, needs 8, 10 or 12"),
        (b"253123", "AI 253: 3 digits, needs 13 to 30"),
        (
            b"0112345678901231X",
            "offset 16 of the GS1 data: expected the digits of an AI after AI 01, found character 'X'",
        ),
        (b"01123456789012318", "the data ends inside an AI: \"8\""),
        (b"3", "the data ends inside an AI: \"3\""),
        (b"310", "the data ends inside an AI: \"310\""),
        (b"10A\x1d10B", "AI 10 occurs twice with different values"),
        (
            b"80131987654Ad4X4bL5ttr2310cXK",
            "AI 8013: check characters are XK, expected 2K",
        ),
        (
            b"8010abc",
            "AI 8010: character 'a' is not allowed here (digits, A-Z, '#', '-', '/')",
        ),
        (b"80110123", "AI 8011: must not start with 0"),
        (b"43212", "AI 4321: must be 0 (no) or 1 (yes)"),
        (b"8003112345678901231", "AI 8003: the first digit must be 0"),
        (
            b"8006012345678901280302",
            "AI 8006: piece number must be between 1 and the total count",
        ),
        (
            b"800100001234500101",
            "AI 8001: a dimension must not be zero",
        ),
        (
            b"4331000123X",
            "AI 4331: only '-' (below zero) may follow the temperature",
        ),
        (
            b"4300AB%2",
            "AI 4300: '%' must be followed by two hexadecimal digits",
        ),
    ];
    for (data, want) in cases {
        assert_eq!(err(data), *want, "{:?}", String::from_utf8_lossy(data));
    }
}

/// Input and the (AI, value) pairs it parses to.
type Case<'a> = (&'a [u8], &'a [(&'a str, &'a str)]);

#[test]
fn valid_element_strings_parse() {
    let ok: &[Case] = &[
        (b"0112345678901231\x1d", &[("01", "12345678901231")]),
        (
            b"01123456789012311724020010A\x1d\x1d21B",
            &[
                ("01", "12345678901231"),
                ("17", "240200"),
                ("10", "A"),
                ("21", "B"),
            ],
        ),
        (b"17250228\x1d10X", &[("17", "250228"), ("10", "X")]),
        (b"17240229", &[("17", "240229")]),
        (
            b"801312345678901234567890123NT",
            &[("8013", "12345678901234567890123NT")],
        ),
        (
            b"80141987654Ad4X4bL5ttr2310c2K",
            &[("8014", "1987654Ad4X4bL5ttr2310c2K")],
        ),
        (b"8030AbC-_9=", &[("8030", "AbC-_9=")]),
        (b"8010AB#-/12", &[("8010", "AB#-/12")]),
        (b"4330001234-", &[("4330", "001234-")]),
        (b"7007250101250131", &[("7007", "250101250131")]),
        (b"800825011513", &[("8008", "25011513")]),
        (b"423123124125126", &[("423", "123124125126")]),
        (
            b"430918000000003600000000",
            &[("4309", "18000000003600000000")],
        ),
        (b"2531234567890128ABC", &[("253", "1234567890128ABC")]),
    ];
    for (data, want) in ok {
        let got = parse(data);
        assert_eq!(
            got.as_ref().map(pairs).map_err(ToString::to_string),
            Ok(want.to_vec()),
            "{:?}",
            String::from_utf8_lossy(data)
        );
    }
}

#[test]
fn check_digits() {
    for good in [
        "106141412345678908",
        "12345678901231",
        "95012345678903",
        "4006381333931",
        "5412345000150",
        "12345678901234560",
        "02345673",
        "00",
    ] {
        assert!(check_digit_ok(good), "{good}");
    }
    for bad in [
        "106141412345678907",
        "12345678901234",
        "",
        "0",
        "1234567890123a",
        "9",
    ] {
        assert!(!check_digit_ok(bad), "{bad}");
    }
    assert_eq!(check_digit("1234567890123"), Some(1));
    assert_eq!(check_digit("12a"), None);
}

#[test]
fn two_digit_years_take_the_century_of_the_gs1_sliding_window() {
    // GS1 General Specifications 7.12: from 49 years before to 50 years after the current year.
    assert_eq!(date_to_iso("990606", 2026).as_deref(), Some("1999-06-06"));
    assert_eq!(full_year(77, 2026), 1977);
    assert_eq!(full_year(76, 2026), 2076);
    assert_eq!(full_year(26, 2026), 2026);
    assert_eq!(full_year(0, 2026), 2000);
    assert_eq!(full_year(0, 2051), 2100);
    assert_eq!(full_year(1, 2051), 2101);
    assert_eq!(full_year(2, 2051), 2002);
    assert_eq!(full_year(99, 2001), 1999);
    assert_eq!(full_year(51, 2001), 2051);
    assert_eq!(full_year(52, 2001), 1952);
    assert_eq!(year_of_unix_ms(0), 1970);
    assert_eq!(year_of_unix_ms(1_798_761_599_999), 2026); // 2026-12-31T23:59:59.999Z
    assert_eq!(year_of_unix_ms(1_798_761_600_000), 2027);
    assert_eq!(year_of_unix_ms(951_782_400_000), 2000); // 2000-02-29
}

#[test]
fn dates_resolve_day_zero_and_leap_years() {
    assert_eq!(date_to_iso("250200", 2026).as_deref(), Some("2025-02-28"));
    assert_eq!(date_to_iso("240200", 2026).as_deref(), Some("2024-02-29"));
    assert_eq!(date_to_iso("001200", 2026).as_deref(), Some("2000-12-31"));
    assert_eq!(date_to_iso("250415", 2026).as_deref(), Some("2025-04-15"));
    assert_eq!(date_to_iso("250229", 2026), None);
    assert_eq!(date_to_iso("251301", 2026), None);
    assert_eq!(date_to_iso("250001", 2026), None);
    assert_eq!(date_to_iso("2501", 2026), None);
    assert!(is_leap_year(2000) && is_leap_year(2024));
    assert!(!is_leap_year(2100) && !is_leap_year(1900) && !is_leap_year(2025));
    assert_eq!(days_in_month(2100, 2), 28);
    assert_eq!(days_in_month(2400, 2), 29);
    assert_eq!(days_in_month(2025, 13), 0);
    assert_eq!(
        err(b"725021000229"),
        "AI 7250: day 29 does not exist in February 2100"
    );
    assert!(parse(b"72502000022912").is_err(), "8 digits only");
    assert!(parse(b"725020000229").is_ok(), "2000-02-29 exists");
    // DD=00 is allowed in 11-17 and 4324/4325, not in 4326 or 7006.
    for ai in ["11", "12", "13", "15", "16", "17"] {
        assert!(parse(format!("{ai}250200").as_bytes()).is_ok(), "{ai}");
    }
    assert!(parse(b"43242502001200").is_ok());
    assert!(parse(b"4326250200").is_err());
}

#[test]
fn the_bracketed_form_parses_like_the_element_string() {
    let raw = parse(b"0112345678901231\x1d10ABC\x1d3103000123");
    let bracketed = parse_bracketed("(01)12345678901231(10)ABC(3103)000123");
    assert_eq!(raw, bracketed);
    // A "(" not followed by a known AI is data.
    assert_eq!(
        parse_bracketed("(10)A(B)C(21)(7)").as_ref().map(pairs),
        Ok(vec![("10", "A(B)C"), ("21", "(7)")])
    );
    assert_eq!(
        parse_bracketed("(89)123").map_err(|e| e.to_string()),
        Err("unknown AI 89".to_owned())
    );
    assert_eq!(
        parse_bracketed("01)123").map_err(|e| e.to_string()),
        Err("bracketed GS1 text, offset 0: expected \"(\" and an AI".to_owned())
    );
    assert_eq!(
        parse_bracketed("(1)123").map_err(|e| e.to_string()),
        Err(
            "bracketed GS1 text, offset 0: expected \"(\", an AI of two to four digits and \")\""
                .to_owned()
        )
    );
    assert_eq!(parse_bracketed(""), Err(Gs1Error::Empty));
    // An unknown "(NN)" after a value is an error, not part of the value before it.
    assert_eq!(
        parse_bracketed("(10)ABC(89)123").map_err(|e| e.to_string()),
        Err("unknown AI 89".to_owned())
    );
    assert_eq!(
        parse_bracketed("(01)12345678901231(2345)X").map_err(|e| e.to_string()),
        Err("unknown AI 2345".to_owned())
    );
    assert_eq!(
        parse_bracketed("(01)12345678901234").map_err(|e| e.to_string()),
        Err("AI 01: check digit is 4, expected 1".to_owned())
    );
}

#[test]
fn elements_accessors() {
    let e = parse(b"02123456789012313712\x1d10L").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.gtin(), Some("12345678901231"));
    assert_eq!(e.sscc(), None);
    assert_eq!(e.get("37"), Some("12"));
    assert_eq!(e.to_map().len(), 3);
    assert_eq!(e.to_bracketed(), "(02)12345678901231(37)12(10)L");
    assert_eq!(e.to_element_string(), "02123456789012313712\u{1d}10L");
    let e = parse(b"0195012345678903\x1d00106141412345678908").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.gtin(), Some("95012345678903"));
    assert_eq!(e.sscc(), Some("106141412345678908"));
}

#[test]
fn a_component_must_contain_a_non_digit_where_required() {
    assert!(check_lint(Lint::NonDigit, b"8014", b"123").is_err());
    assert!(check_lint(Lint::NonDigit, b"8014", b"12A").is_ok());
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    fn with_check(body: String) -> String {
        let d = check_digit(&body).unwrap_or(0);
        format!("{body}{d}")
    }

    /// Up to `max` characters of GS1 character set 82.
    fn cset82(max: usize) -> impl Strategy<Value = String> {
        let class = "[!\"%&'()*+,\\-./0-9:;<=>?A-Z_a-z]";
        proptest::string::string_regex(&format!("{class}{{1,{max}}}"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn element() -> impl Strategy<Value = (String, String)> {
        prop_oneof![
            "[0-9]{17}".prop_map(|b| ("00".to_owned(), with_check(b))),
            "[0-9]{13}".prop_map(|b| ("01".to_owned(), with_check(b))),
            "[0-9]{16}".prop_map(|b| ("402".to_owned(), with_check(b))),
            (0u8..100, 1u8..13, 0u8..29)
                .prop_map(|(y, m, d)| ("17".to_owned(), format!("{y:02}{m:02}{d:02}"))),
            ("[0-5]", "[0-9]{6}").prop_map(|(n, v)| (format!("310{n}"), v)),
            "[0-9]{1,8}".prop_map(|v| ("37".to_owned(), v)),
            cset82(20).prop_map(|v| ("10".to_owned(), v)),
            cset82(20).prop_map(|v| ("21".to_owned(), v)),
            cset82(30).prop_map(|v| ("400".to_owned(), v)),
            cset82(90).prop_map(|v| ("92".to_owned(), v)),
        ]
    }

    proptest! {
        #[test]
        fn encoding_then_parsing_is_the_identity(
            list in proptest::collection::vec(element(), 1..6)
        ) {
            let mut seen = std::collections::BTreeSet::new();
            let list: Vec<_> = list.into_iter().filter(|(ai, _)| seen.insert(ai.clone())).collect();
            let elements = Elements(list);
            let raw = elements.to_element_string();
            prop_assert_eq!(parse(raw.as_bytes()), Ok(elements.clone()), "{:?}", raw);
            // In the bracketed form a value holding "(" + AI + ")" is ambiguous by design.
            let ambiguous = elements.0.iter().any(|(_, v)| v.contains('('));
            if !ambiguous {
                prop_assert_eq!(parse_bracketed(&elements.to_bracketed()), Ok(elements));
            }
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&data);
            let _ = parse_bracketed(&String::from_utf8_lossy(&data));
        }

        #[test]
        fn parse_never_panics_on_digit_soup(data in "[0-9\\x1d()A]{0,64}") {
            let _ = parse(data.as_bytes());
            let _ = parse_bracketed(&data);
        }
    }
}
