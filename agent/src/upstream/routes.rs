//! Routing: which topic and priority an event gets (`[[routes]]`, docs/configuration.md).
//!
//! The routes of a configuration are compiled once into [`Routes`]: each `when` becomes bit
//! masks over kinds, reasons and roles and short lists of source and station ids, each topic a
//! list of literal and placeholder pieces. Matching is a few mask tests and string compares;
//! rendering appends to a `String` the caller reuses, so nothing is allocated per event beyond
//! the topic string itself.
//!
//! The priority is decided when a reading is stored (the writer, `buffer::writer`), the topic
//! when the event is sent (`upstream`), each from the routes in effect then: a pushed
//! configuration re-routes the backlog but does not reorder it.

use std::fmt::Write as _;

use edge_protocol::event::ExceptionReason;
use edge_protocol::{Body, Envelope, Kind, Role};

use crate::config::{Config, Priority, RouteConfig, Strings};

/// The source id of the agent's own events (drop reports, rows set aside).
pub const AGENT_SOURCE: &str = "edge-agent";

/// What a placeholder renders when the event has no value for it.
pub const NONE: &str = "none";

/// First topic levels under `{prefix}/{site}/` that belong to the agent's control topics.
const CONTROL_LEVELS: [&str; 3] = ["status", "config", "cmd"];

/// The reasons of `exception` events, as written in config and topics.
const REASONS: [(ExceptionReason, &str); 8] = [
    (ExceptionReason::NoRead, "no_read"),
    (ExceptionReason::InvalidBarcode, "invalid_barcode"),
    (ExceptionReason::UnstableWeight, "unstable_weight"),
    (ExceptionReason::Overload, "overload"),
    (ExceptionReason::Underload, "underload"),
    (ExceptionReason::ScaleError, "scale_error"),
    (ExceptionReason::Undecodable, "undecodable"),
    (ExceptionReason::Dropped, "dropped"),
];

fn reason_index(r: ExceptionReason) -> usize {
    match r {
        ExceptionReason::NoRead => 0,
        ExceptionReason::InvalidBarcode => 1,
        ExceptionReason::UnstableWeight => 2,
        ExceptionReason::Overload => 3,
        ExceptionReason::Underload => 4,
        ExceptionReason::ScaleError => 5,
        ExceptionReason::Undecodable => 6,
        ExceptionReason::Dropped => 7,
    }
}

/// An exception reason's name.
pub fn reason_name(r: ExceptionReason) -> &'static str {
    REASONS[reason_index(r)].1
}

fn kind_index(k: Kind) -> usize {
    Kind::ALL.iter().position(|x| *x == k).unwrap_or(0)
}

fn role_index(r: Role) -> usize {
    Role::ALL.iter().position(|x| *x == r).unwrap_or(0)
}

/// In the reason and role masks: the event has none (not an exception; no station).
const ABSENT: u16 = 1 << 8;
const ANY: u16 = u16::MAX;

/// What routing looks at in an event.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub kind: Kind,
    /// An exception's reason; None for every other kind.
    pub reason: Option<ExceptionReason>,
    pub source: &'a str,
    pub station: Option<&'a str>,
    pub role: Option<Role>,
}

impl<'a> Event<'a> {
    pub fn of_body(
        body: &Body,
        source: &'a str,
        station: Option<&'a str>,
        role: Option<Role>,
    ) -> Event<'a> {
        Event {
            kind: body.kind(),
            reason: match body {
                Body::Exception(e) => Some(e.reason),
                _ => None,
            },
            source,
            station,
            role,
        }
    }

    pub fn of_envelope(env: &'a Envelope) -> Event<'a> {
        Event::of_body(&env.body, &env.source, env.station.as_deref(), env.role)
    }
}

/// A placeholder of a topic template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Kind,
    Reason,
    Source,
    Station,
    Role,
}

impl Field {
    const NAMES: [(&'static str, Field); 5] = [
        ("kind", Field::Kind),
        ("reason", Field::Reason),
        ("source", Field::Source),
        ("station", Field::Station),
        ("role", Field::Role),
    ];

    fn parse(s: &str) -> Option<Field> {
        Field::NAMES.iter().find(|(n, _)| *n == s).map(|(_, f)| *f)
    }

    fn value<'a>(self, ev: &Event<'a>) -> &'a str {
        match self {
            Field::Kind => ev.kind.as_str(),
            Field::Reason => ev.reason.map(reason_name).unwrap_or(NONE),
            Field::Source => ev.source,
            Field::Station => ev.station.unwrap_or(NONE),
            Field::Role => ev.role.map(Role::as_str).unwrap_or(NONE),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(Box<str>),
    Field(Field),
}

/// One compiled route.
#[derive(Debug, Clone)]
struct Rule {
    /// Bit `i`: `Kind::ALL[i]` matches.
    kinds: u16,
    /// Bit `i`: `REASONS[i]`; `ABSENT`: an event without a reason.
    reasons: u16,
    /// Bit `i`: `Role::ALL[i]`; `ABSENT`: an event without a role.
    roles: u16,
    sources: Option<Box<[Box<str>]>>,
    stations: Option<Box<[Box<str>]>>,
    topic: Box<[Piece]>,
    priority: Priority,
}

impl Rule {
    fn matches(&self, ev: &Event<'_>) -> bool {
        let bit = |i: usize| 1u16 << i;
        self.kinds & bit(kind_index(ev.kind)) != 0
            && self.reasons & ev.reason.map_or(ABSENT, |r| bit(reason_index(r))) != 0
            && self.roles & ev.role.map_or(ABSENT, |r| bit(role_index(r))) != 0
            && self
                .sources
                .as_ref()
                .is_none_or(|s| s.iter().any(|x| **x == *ev.source))
            && self
                .stations
                .as_ref()
                .is_none_or(|s| ev.station.is_some_and(|st| s.iter().any(|x| **x == *st)))
    }
}

/// The compiled routes of one configuration. The default has none: every event goes to
/// `events/{kind}` with normal priority.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    rules: Vec<Rule>,
}

impl Routes {
    /// The routes of a validated configuration (a route that does not compile, which
    /// validation refuses, is left out).
    pub fn of(config: &Config) -> Routes {
        compile(config).0
    }

    fn find(&self, ev: &Event<'_>) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(ev))
    }

    /// The priority of an event: its first matching route's, else normal.
    pub fn priority(&self, ev: &Event<'_>) -> Priority {
        self.find(ev).map_or(Priority::Normal, |r| r.priority)
    }

    /// Appends the event's topic (under `{prefix}/{site}/`) to `out`: its first matching
    /// route's, else `events/{kind}`.
    pub fn render(&self, ev: &Event<'_>, out: &mut String) {
        match self.find(ev) {
            Some(rule) => {
                for p in rule.topic.iter() {
                    match p {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Field(f) => out.push_str(f.value(ev)),
                    }
                }
            }
            None => {
                out.push_str("events/");
                out.push_str(ev.kind.as_str());
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// The routes of `config` and the problems of those that do not compile, as (key under
/// `routes[i]`, message) with the route's index.
pub fn compile(config: &Config) -> (Routes, Vec<(usize, String, String)>) {
    let sources: Vec<&str> = config
        .sources
        .serial
        .iter()
        .map(|s| s.id.as_str())
        .chain(config.sources.mqtt.iter().map(|s| s.id.as_str()))
        .collect();
    let stations: Vec<&str> = config.stations.iter().map(|s| s.id.as_str()).collect();
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    for (i, route) in config.routes.iter().enumerate() {
        let mut p = Vec::new();
        if let Some(rule) = compile_one(route, &sources, &stations, &mut p) {
            rules.push(rule);
        }
        problems.extend(p.into_iter().map(|(k, m)| (i, k, m)));
    }
    (Routes { rules }, problems)
}

type Problems = Vec<(String, String)>;

/// Each listed value's key (`when.kind` for a single string, `when.kind[j]` in a list).
fn each<'a>(name: &'a str, s: &'a Strings) -> impl Iterator<Item = (String, &'a str)> + 'a {
    s.items.iter().enumerate().map(move |(j, v)| {
        let key = if s.list {
            format!("when.{name}[{j}]")
        } else {
            format!("when.{name}")
        };
        (key, v.as_str())
    })
}

/// A mask of the names listed for `name` (ANY when not given), reporting unknown ones.
fn mask(name: &str, given: Option<&Strings>, known: &[&str], noun: &str, p: &mut Problems) -> u16 {
    let Some(s) = given else { return ANY };
    if s.items.is_empty() {
        p.push((
            format!("when.{name}"),
            format!("an empty list matches nothing; leave `{name}` out to match every {noun}"),
        ));
        return 0;
    }
    let mut m = 0;
    for (key, v) in each(name, s) {
        match known.iter().position(|k| *k == v) {
            Some(i) => m |= 1 << i,
            None => p.push((key, format!("{v:?} is not {noun} ({})", known.join(", ")))),
        }
    }
    m
}

/// The ids listed for `name` (None when not given), reporting unknown ones.
fn ids(
    name: &str,
    given: Option<&Strings>,
    known: &[&str],
    p: &mut Problems,
) -> Option<Box<[Box<str>]>> {
    let s = given?;
    if s.items.is_empty() {
        p.push((
            format!("when.{name}"),
            format!("an empty list matches nothing; leave `{name}` out to match every {name}"),
        ));
    }
    for (key, v) in each(name, s) {
        if known.contains(&v) || (name == "source" && v == AGENT_SOURCE) {
            continue;
        }
        let msg = if name == "source" {
            format!(
                "{v:?} is not a source; sources are {} (and {AGENT_SOURCE}, the agent's own events)",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )
        } else {
            format!("{v:?} is not a station; add [[stations]] id = {v:?} or correct the id")
        };
        p.push((key, msg));
    }
    Some(s.items.iter().map(|v| v.as_str().into()).collect())
}

fn compile_one(
    route: &RouteConfig,
    sources: &[&str],
    stations: &[&str],
    p: &mut Problems,
) -> Option<Rule> {
    let before = p.len();
    let w = &route.when;
    let kind_names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    let reason_names: Vec<&str> = REASONS.iter().map(|(_, n)| *n).collect();
    let role_names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
    let kinds = mask("kind", w.kind.as_ref(), &kind_names, "a kind", p);
    // A kind that did not read says nothing about which kinds were meant.
    let kinds_read = p.len() == before;
    let mut reasons = mask("reason", w.reason.as_ref(), &reason_names, "a reason", p);
    if w.reason.is_some() {
        // Only exceptions have one: an event without a reason does not match.
        reasons &= !ABSENT;
        if kinds_read && w.kind.is_some() && kinds & (1 << kind_index(Kind::Exception)) == 0 {
            p.push((
                "when.reason".into(),
                "only exceptions have a reason, and when.kind does not list \"exception\": add it, or remove reason".into(),
            ));
        }
    }
    let mut roles = mask("role", w.role.as_ref(), &role_names, "a role", p);
    if w.role.is_some() {
        roles &= !ABSENT;
    }
    let source_ids = ids("source", w.source.as_ref(), sources, p);
    let station_ids = ids("station", w.station.as_ref(), stations, p);
    let topic = parse_topic(&route.topic, p)?;
    check_control(
        &route.topic,
        &topic,
        w,
        sources_of(w, sources),
        stations_of(w, stations),
        p,
    );
    (p.len() == before).then_some(Rule {
        kinds,
        reasons,
        roles,
        sources: source_ids,
        stations: station_ids,
        topic,
        priority: route.priority,
    })
}

/// The source ids a route's `{source}` may render.
fn sources_of<'a>(w: &'a crate::config::When, known: &[&'a str]) -> Vec<&'a str> {
    match &w.source {
        Some(s) => s.items.iter().map(String::as_str).collect(),
        None => known.iter().copied().chain([AGENT_SOURCE]).collect(),
    }
}

/// The values a route's `{station}` may render.
fn stations_of<'a>(w: &'a crate::config::When, known: &[&'a str]) -> Vec<&'a str> {
    match &w.station {
        Some(s) => s.items.iter().map(String::as_str).collect(),
        None => known.iter().copied().chain([NONE]).collect(),
    }
}

/// A topic template: levels of text and `{placeholder}`s, no wildcards, no empty level.
fn parse_topic(topic: &str, p: &mut Problems) -> Option<Box<[Piece]>> {
    let before = p.len();
    let mut bad = |msg: String| p.push(("topic".into(), msg));
    if topic.is_empty() {
        bad(
            "is empty; write a topic under {prefix}/{site}/, e.g. \"alerts/{station}/{reason}\""
                .into(),
        );
        return None;
    }
    if topic.contains(['+', '#']) {
        bad(format!(
            "{topic:?} has a wildcard ('+' or '#'), which a published topic cannot have; name the levels, or use a placeholder such as {{station}}"
        ));
    }
    if topic.contains('\0') {
        bad(format!(
            "{topic:?} has a NUL character, which MQTT topics cannot have"
        ));
    }
    if topic.split('/').any(str::is_empty) {
        bad(format!(
            "{topic:?} has an empty level (a leading, trailing or doubled '/'); it is already under {{prefix}}/{{site}}/, write e.g. \"alerts/{{station}}\""
        ));
    }
    let mut pieces = Vec::new();
    let mut rest = topic;
    while !rest.is_empty() {
        let open = rest.find('{');
        let close = rest.find('}');
        match (open, close) {
            (None, None) => {
                pieces.push(Piece::Text(rest.into()));
                break;
            }
            (Some(o), Some(c)) if o < c => {
                if o > 0 {
                    pieces.push(Piece::Text(rest[..o].into()));
                }
                let name = &rest[o + 1..c];
                match Field::parse(name) {
                    Some(f) => pieces.push(Piece::Field(f)),
                    None => bad(format!(
                        "{{{name}}} is not a placeholder; use {{kind}}, {{reason}}, {{source}}, {{station}} or {{role}}"
                    )),
                }
                rest = &rest[c + 1..];
            }
            _ => {
                bad(format!(
                    "{topic:?}: '{{' and '}}' only enclose a placeholder such as {{station}}"
                ));
                break;
            }
        }
    }
    (p.len() == before).then(|| pieces.into_boxed_slice())
}

/// A topic whose first level renders as `status`, `config` or `cmd` would land among the
/// agent's control topics.
fn check_control(
    topic: &str,
    pieces: &[Piece],
    w: &crate::config::When,
    sources: Vec<&str>,
    stations: Vec<&str>,
    p: &mut Problems,
) {
    // The pieces of the first level: up to the first '/' in a text piece.
    let mut first: Vec<Piece> = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => match t.split_once('/') {
                Some((head, _)) => {
                    if !head.is_empty() {
                        first.push(Piece::Text(head.into()));
                    }
                    break;
                }
                None => first.push(piece.clone()),
            },
            Piece::Field(_) => first.push(piece.clone()),
        }
    }
    let given = |s: &Option<Strings>, all: Vec<&'static str>| -> Vec<String> {
        match s {
            Some(s) => s.items.clone(),
            None => all.into_iter().map(String::from).collect(),
        }
    };
    let values = |f: Field| -> Vec<String> {
        match f {
            Field::Kind => given(&w.kind, Kind::ALL.iter().map(|k| k.as_str()).collect()),
            Field::Reason => given(
                &w.reason,
                REASONS.iter().map(|(_, n)| *n).chain([NONE]).collect(),
            ),
            Field::Role => given(
                &w.role,
                Role::ALL.iter().map(|r| r.as_str()).chain([NONE]).collect(),
            ),
            Field::Source => sources.iter().map(|s| s.to_string()).collect(),
            Field::Station => stations.iter().map(|s| s.to_string()).collect(),
        }
    };
    // Every rendering of the first level (few: ids and names are short lists).
    let mut renderings = vec![String::new()];
    for piece in &first {
        let options = match piece {
            Piece::Text(t) => vec![t.to_string()],
            Piece::Field(f) => values(*f),
        };
        if renderings.len() * options.len() > 100_000 {
            return;
        }
        renderings = renderings
            .iter()
            .flat_map(|r| options.iter().map(move |o| format!("{r}{o}")))
            .collect();
    }
    if let Some(hit) = renderings
        .iter()
        .find(|r| CONTROL_LEVELS.contains(&r.as_str()))
    {
        let mut shown = String::new();
        let _ = write!(shown, "{hit}/…");
        p.push((
            "topic".into(),
            format!(
                "{topic:?} can render as {shown:?}, among the agent's control topics (status, config/…, cmd/…); start it with another level, e.g. \"alerts/\""
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use edge_protocol::event::ExceptionReason as R;
    use proptest::prelude::*;

    use super::*;

    fn routes(extra: &str) -> Routes {
        let text = format!(
            r#"
[site]
id = "dc-test-01"
[upstream]
url = "mqtt://127.0.0.1:1883"
[[stations]]
id = "scale-01"
role = "weighing"
[[stations]]
id = "sort-01"
role = "sorting"
[[sources.mqtt]]
id = "sorter-1"
url = "mqtt://127.0.0.1:1883"
topics = ["s"]
decoder = "barcode"
station = "sort-01"
[[sources.mqtt]]
id = "scale-1"
url = "mqtt://127.0.0.1:1883"
topics = ["w"]
decoder = "barcode"
station = "scale-01"
{extra}
"#
        );
        let cfg = crate::config::load_str(&text, "test").unwrap_or_else(|p| panic!("{p}"));
        Routes::of(&cfg)
    }

    fn ev<'a>(
        kind: Kind,
        reason: Option<R>,
        source: &'a str,
        station: Option<&'a str>,
    ) -> Event<'a> {
        Event {
            kind,
            reason,
            source,
            station,
            role: station.map(|_| Role::Weighing),
        }
    }

    fn topic(r: &Routes, e: &Event<'_>) -> (String, Priority) {
        let mut out = String::new();
        r.render(e, &mut out);
        (out, r.priority(e))
    }

    const EXAMPLE: &str = r#"
[[routes]]
when = { kind = "exception", reason = ["scale_error", "overload", "underload"] }
topic = "alerts/{station}/{reason}"
priority = "high"
[[routes]]
when = { kind = "exception", reason = "no_read" }
topic = "noreads/{station}"
[[routes]]
when = { source = "sorter-1", kind = "equipment.state" }
topic = "alerts/{station}/{kind}"
priority = "high"
"#;

    #[test]
    fn the_first_matching_route_decides_and_unmatched_events_keep_events_kind() {
        let r = routes(EXAMPLE);
        let overload = ev(
            Kind::Exception,
            Some(R::Overload),
            "scale-1",
            Some("scale-01"),
        );
        assert_eq!(
            topic(&r, &overload),
            ("alerts/scale-01/overload".into(), Priority::High)
        );
        let no_read = ev(Kind::Exception, Some(R::NoRead), "scanner-1", None);
        assert_eq!(
            topic(&r, &no_read),
            ("noreads/none".into(), Priority::Normal),
            "a null station renders as none"
        );
        let state = ev(Kind::EquipmentState, None, "sorter-1", Some("sort-01"));
        assert_eq!(
            topic(&r, &state),
            ("alerts/sort-01/equipment.state".into(), Priority::High)
        );
        let other_state = ev(Kind::EquipmentState, None, "conveyor-1", Some("sort-01"));
        assert_eq!(
            topic(&r, &other_state),
            ("events/equipment.state".into(), Priority::Normal)
        );
        let invalid = ev(Kind::Exception, Some(R::InvalidBarcode), "scanner-1", None);
        assert_eq!(topic(&r, &invalid).0, "events/exception");
        let scan = ev(Kind::ShipmentScan, None, "scanner-1", Some("scale-01"));
        assert_eq!(topic(&r, &scan).0, "events/shipment.scan");
    }

    #[test]
    fn placeholders_without_a_value_render_as_none_and_rendering_appends() {
        let r = routes("[[routes]]\ntopic = \"all/{kind}/{reason}/{source}/{station}/{role}\"\n");
        let scan = Event {
            kind: Kind::ShipmentScan,
            reason: None,
            source: "s1",
            station: None,
            role: None,
        };
        let mut out = String::from("edge/dc-test-01/");
        r.render(&scan, &mut out);
        assert_eq!(out, "edge/dc-test-01/all/shipment.scan/none/s1/none/none");
    }

    #[test]
    fn station_and_role_keys_do_not_match_an_event_without_a_station() {
        let r = routes(
            "[[routes]]\nwhen = { role = \"weighing\" }\ntopic = \"w\"\n[[routes]]\nwhen = { station = \"scale-01\" }\ntopic = \"s\"\n",
        );
        let none = ev(Kind::ShipmentWeight, None, "x", None);
        assert_eq!(topic(&r, &none).0, "events/shipment.weight");
        let at = ev(Kind::ShipmentWeight, None, "x", Some("scale-01"));
        assert_eq!(topic(&r, &at).0, "w");
    }

    #[test]
    fn rendering_a_routed_topic_into_a_reused_string_does_not_reallocate() {
        let r = routes(EXAMPLE);
        let e = ev(
            Kind::Exception,
            Some(R::ScaleError),
            "scale-1",
            Some("scale-01"),
        );
        let mut out = String::with_capacity(64);
        let before = out.as_ptr();
        for _ in 0..100 {
            out.clear();
            r.render(&e, &mut out);
        }
        assert_eq!(out.as_ptr(), before);
        assert_eq!(out, "alerts/scale-01/scale_error");
    }

    /// A route as the model sees it: per key, the accepted values (None: any).
    #[derive(Debug, Clone)]
    struct Model {
        kind: Option<Vec<usize>>,
        reason: Option<Vec<usize>>,
        source: Option<Vec<usize>>,
        station: Option<Vec<usize>>,
    }

    const SOURCES: [&str; 3] = ["sorter-1", "edge-agent", "scale-1"];
    const STATIONS: [&str; 2] = ["scale-01", "sort-01"];

    fn pick(n: usize) -> impl Strategy<Value = Option<Vec<usize>>> {
        proptest::option::of(proptest::collection::vec(0..n, 1..3))
    }

    fn list(names: &[&str], idx: &[usize]) -> String {
        let items: Vec<String> = idx.iter().map(|i| format!("{:?}", names[*i])).collect();
        format!("[{}]", items.join(", "))
    }

    proptest! {
        #[test]
        fn the_compiled_matcher_agrees_with_a_first_match_model(
            models in proptest::collection::vec((pick(6), pick(8), pick(2), pick(2)), 0..5),
            kind in 0..6usize, reason in 0..8usize, source in 0..3usize, station in proptest::option::of(0..2usize),
        ) {
            let models: Vec<Model> = models.into_iter().map(|(k, r, s, st)| Model {
                // A reason key needs an exception kind (validation refuses the rest).
                kind: if r.is_some() { k.map(|mut k| { k.push(5); k }) } else { k },
                reason: r, source: s, station: st,
            }).collect();
            let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            let reasons: Vec<&str> = REASONS.iter().map(|(_, n)| *n).collect();
            let mut text = String::new();
            for (i, m) in models.iter().enumerate() {
                let mut when = Vec::new();
                if let Some(k) = &m.kind { when.push(format!("kind = {}", list(&kinds, k))); }
                if let Some(r) = &m.reason { when.push(format!("reason = {}", list(&reasons, r))); }
                if let Some(s) = &m.source { when.push(format!("source = {}", list(&SOURCES, s))); }
                if let Some(s) = &m.station { when.push(format!("station = {}", list(&STATIONS, s))); }
                text.push_str(&format!("[[routes]]\nwhen = {{ {} }}\ntopic = \"r{i}\"\n", when.join(", ")));
            }
            let r = routes(&text);
            let kind_v = Kind::ALL[kind];
            let reason_v = (kind_v == Kind::Exception).then_some(REASONS[reason].0);
            let e = Event { kind: kind_v, reason: reason_v, source: SOURCES[source], station: station.map(|s| STATIONS[s]), role: None };
            let want = models.iter().position(|m| {
                m.kind.as_ref().is_none_or(|k| k.contains(&kind))
                    && m.reason.as_ref().is_none_or(|rs| reason_v.is_some() && rs.contains(&reason))
                    && m.source.as_ref().is_none_or(|s| s.contains(&source))
                    && m.station.as_ref().is_none_or(|s| station.is_some_and(|st| s.contains(&st)))
            });
            let want = match want { Some(i) => format!("r{i}"), None => format!("events/{}", kind_v.as_str()) };
            prop_assert_eq!(topic(&r, &e).0, want);
        }
    }
}
