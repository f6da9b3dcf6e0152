//! Mapping rules for the `json` and `delimited` decoders (docs/configuration.md, decoders): how a site maps
//! its own sorter and conveyor telegrams to canonical bodies without code changes.
//!
//! A record is a JSON value (one MQTT message, or one line) or the columns of a delimited
//! telegram. Rules are tried in order and the first whose `when` conditions all hold decides;
//! a record that no rule matches, or that the matching rule cannot map, is an error whose text
//! the agent puts in an `undecodable` exception (with the raw bytes).
//!
//! - `when`: selector = value. Values compare as text: a JSON string by its content, a number,
//!   boolean or null by its JSON text (`42`, `true`, `null`); a missing value never matches.
//! - `fields`: body field → selector. A missing or empty value leaves an optional field null.
//! - `values`: per enum field, raw value → canonical value (`result = { OK = "diverted" }`). A
//!   raw value that is already canonical needs no entry.
//!
//! | kind | fields (required in bold) | enum fields |
//! | --- | --- | --- |
//! | `shipment.sort` | code, sscc, destination, **result** | result: diverted, recirculated, no_read, full, fault |
//! | `equipment.state` | **state**, code, message | state: running, stopped, fault |
//! | `shipment.scan`, `inventory.scan` | **code**, symbology | – |
//!
//! A mapped `code` is read as the barcode decoder reads a code ([`barcode::classify_code`]): a
//! GS1 code fills `sscc` (and for scans `gtin`, `batch`, … exactly as a scanner line would; a
//! scan's kind follows its content, the rule's kind decides only for non-GS1 codes). For
//! `shipment.sort`, where sorters report the SSCC without its AI, a code of 18 digits with a
//! valid check digit is taken as the SSCC too. A mapped `sscc` must be an SSCC (18 digits with a
//! valid check digit, or a GS1 code holding AI 00). A mapped `symbology` names the symbology
//! of a code that has no AIM prefix.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

pub use json::Json;

use crate::barcode::{self, Decoded};
use crate::event::{
    Body, EquipmentState, EquipmentStateValue, Kind, Role, ShipmentSort, SortResult,
};
use crate::gs1;

mod decoder;
mod json;

pub use decoder::{Records, RulesDecoder};

/// Where a value is in a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// A JSON pointer (RFC 6901), `"/a/b"`, for `json` records.
    Pointer(String),
    /// A column index from 0, for `delimited` records.
    Column(usize),
}

impl Selector {
    /// `"/type"` is a JSON pointer, `"0"` a column index; anything else is refused with a
    /// message saying what a selector looks like.
    pub fn parse(s: &str) -> Result<Selector, String> {
        if s.starts_with('/') {
            let bytes = s.as_bytes();
            if let Some(i) = bytes
                .iter()
                .enumerate()
                .position(|(i, &b)| b == b'~' && !matches!(bytes.get(i + 1), Some(b'0' | b'1')))
            {
                return Err(format!(
                    "{s:?}: '~' at offset {i} must be followed by 0 (for '~') or 1 (for '/') in a JSON pointer"
                ));
            }
            return Ok(Selector::Pointer(s.to_owned()));
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(Selector::Column)
                .map_err(|_| format!("{s:?}: column index too large"));
        }
        Err(format!(
            "{s:?} is neither a JSON pointer (starting with '/', e.g. \"/type\") nor a column index (\"0\", \"1\", …)"
        ))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Pointer(p) => f.write_str(p),
            Selector::Column(c) => write!(f, "column {c}"),
        }
    }
}

/// One mapping rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Conditions that must all hold: the selected value equals the text.
    pub when: Vec<(Selector, String)>,
    /// The kind of body the rule makes.
    pub kind: Kind,
    /// Body field name → where its value is.
    pub fields: Vec<(String, Selector)>,
    /// Field name → raw value → canonical value, for enum fields.
    pub values: BTreeMap<String, BTreeMap<String, String>>,
}

/// Which records a rule will be applied to: selectors must suit them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// `decoder = "json"`: JSON pointers.
    Json,
    /// `decoder = "delimited"`: column indexes.
    Delimited,
}

/// A decoded record, ready for the rules. It borrows from the bytes it was read from.
#[derive(Debug, Clone, PartialEq)]
pub enum Record<'a> {
    /// One JSON value.
    Json(Json<'a>),
    /// The columns of a delimited telegram, each trimmed of surrounding blanks.
    Columns(Vec<&'a str>),
}

impl<'a> Record<'a> {
    /// Parses one JSON document (surrounding whitespace allowed).
    pub fn json(bytes: &'a [u8]) -> Result<Record<'a>, String> {
        Json::parse(bytes)
            .map(Record::Json)
            .map_err(|e| format!("not JSON: {e}"))
    }

    /// Splits a telegram on `separator`; the telegram must be UTF-8.
    pub fn delimited(frame: &'a [u8], separator: &str) -> Result<Record<'a>, String> {
        if separator.is_empty() {
            return Err("the separator is empty".into());
        }
        let text = std::str::from_utf8(frame).map_err(|e| {
            let at = e.valid_up_to();
            format!(
                "byte 0x{:02X} at offset {at} is not valid UTF-8",
                frame.get(at).copied().unwrap_or(0)
            )
        })?;
        Ok(Record::Columns(
            text.split(separator).map(str::trim).collect(),
        ))
    }

    /// The value a selector points at.
    fn get(&self, sel: &Selector) -> Result<Found<'_>, String> {
        match (self, sel) {
            (Record::Json(v), Selector::Pointer(p)) => Ok(match v.pointer(p) {
                None => Found::Absent,
                Some(Json::String(s)) => Found::Text(Cow::Borrowed(s)),
                Some(Json::Null) => Found::Null,
                Some(Json::Number(n)) => Found::Text(Cow::Owned(n.to_string())),
                Some(Json::Bool(b)) => {
                    Found::Text(Cow::Borrowed(if *b { "true" } else { "false" }))
                }
                Some(v @ (Json::Array(_) | Json::Object(_))) => Found::Composite(v),
            }),
            (Record::Columns(c), Selector::Column(i)) => Ok(match c.get(*i) {
                Some(s) => Found::Text(Cow::Borrowed(s)),
                None => Found::Absent,
            }),
            (Record::Json(_), Selector::Column(i)) => Err(format!(
                "column index {i} used on a JSON record; use a JSON pointer such as \"/field\""
            )),
            (Record::Columns(_), Selector::Pointer(p)) => Err(format!(
                "JSON pointer {p:?} used on a delimited telegram; use a column index such as \"0\""
            )),
        }
    }

    fn describe_absent(&self, sel: &Selector) -> String {
        match self {
            Record::Columns(c) => {
                format!("{sel} is not in the telegram (it has {} columns)", c.len())
            }
            Record::Json(_) => format!("{sel} is not in the record"),
        }
    }
}

/// What a selector found.
enum Found<'a> {
    Absent,
    Null,
    Text(Cow<'a, str>),
    Composite(&'a Json<'a>),
}

impl Found<'_> {
    /// The value as `when` compares it.
    fn as_when_text(&self) -> Option<Cow<'_, str>> {
        match self {
            Found::Absent => None,
            Found::Null => Some(Cow::Borrowed("null")),
            Found::Text(t) => Some(Cow::Borrowed(t)),
            Found::Composite(v) => Some(Cow::Owned(v.to_value().to_string())),
        }
    }
}

/// A field a kind's body has.
struct FieldSpec {
    name: &'static str,
    required: bool,
    /// The canonical values, for enum fields.
    canonical: &'static [&'static str],
}

const fn field(name: &'static str, required: bool) -> FieldSpec {
    FieldSpec {
        name,
        required,
        canonical: &[],
    }
}

const SORT_RESULTS: &[&str] = &["diverted", "recirculated", "no_read", "full", "fault"];
const STATES: &[&str] = &["running", "stopped", "fault"];

const SORT_FIELDS: &[FieldSpec] = &[
    field("code", false),
    field("sscc", false),
    field("destination", false),
    FieldSpec {
        name: "result",
        required: true,
        canonical: SORT_RESULTS,
    },
];
const STATE_FIELDS: &[FieldSpec] = &[
    FieldSpec {
        name: "state",
        required: true,
        canonical: STATES,
    },
    field("code", false),
    field("message", false),
];
const SCAN_FIELDS: &[FieldSpec] = &[field("code", true), field("symbology", false)];

/// The fields a rule may map for a kind; `None` for kinds rules do not make.
fn spec(kind: Kind) -> Option<&'static [FieldSpec]> {
    match kind {
        Kind::ShipmentSort => Some(SORT_FIELDS),
        Kind::EquipmentState => Some(STATE_FIELDS),
        Kind::ShipmentScan | Kind::InventoryScan => Some(SCAN_FIELDS),
        Kind::ShipmentWeight | Kind::Exception => None,
    }
}

fn names(fields: &[FieldSpec]) -> String {
    fields.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
}

impl Rule {
    /// Builds a rule from its configuration text (`when`, `kind`, `fields`, `values` as in
    /// docs/configuration.md, decoders) and checks it ([`check_rule`]); every problem is returned, each
    /// naming its key relative to the rule (`fields.result`, `when."type"`).
    pub fn from_config<'a>(
        when: impl IntoIterator<Item = (&'a str, &'a str)>,
        kind: &str,
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
        values: BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<Rule, Vec<String>> {
        let mut problems = Vec::new();
        let mut parsed_when = Vec::new();
        for (sel, value) in when {
            match Selector::parse(sel) {
                Ok(s) => parsed_when.push((s, value.to_owned())),
                Err(e) => problems.push(format!("when.{sel:?}: {e}")),
            }
        }
        let mut parsed_fields = Vec::new();
        for (name, sel) in fields {
            match Selector::parse(sel) {
                Ok(s) => parsed_fields.push((name.to_owned(), s)),
                Err(e) => problems.push(format!("fields.{name}: {e}")),
            }
        }
        let Some(kind) = Kind::parse(kind) else {
            problems.push(format!(
                "kind: {kind:?} is not a kind rules make (shipment.sort, equipment.state, shipment.scan, inventory.scan)"
            ));
            return Err(problems);
        };
        let rule = Rule {
            when: parsed_when,
            kind,
            fields: parsed_fields,
            values,
        };
        problems.extend(check_rule(&rule));
        if problems.is_empty() {
            Ok(rule)
        } else {
            Err(problems)
        }
    }

    fn selector(&self, name: &str) -> Option<&Selector> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }

    /// Whether every `when` condition holds; `Err` if a selector does not suit the record.
    fn matches(&self, record: &Record) -> Result<bool, String> {
        for (sel, want) in &self.when {
            let found = record.get(sel)?;
            if found.as_when_text().as_deref() != Some(want.as_str()) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Why the rule did not match, for the no-match message.
    fn mismatch(&self, record: &Record) -> String {
        for (sel, want) in &self.when {
            match record.get(sel) {
                Err(e) => return e,
                Ok(found) => match found.as_when_text() {
                    None => return format!("{sel} is missing, wanted {want:?}"),
                    Some(got) if got != want.as_str() => {
                        return format!("{sel} is {got:?}, not {want:?}")
                    }
                    Some(_) => {}
                },
            }
        }
        "matches".into()
    }

    /// A mapped field's text: `None` if not mapped, missing, null or empty.
    fn text<'r>(&self, record: &'r Record, name: &str) -> Result<Option<Cow<'r, str>>, String> {
        let Some(sel) = self.selector(name) else {
            return Ok(None);
        };
        match record.get(sel).map_err(|e| format!("field {name}: {e}"))? {
            Found::Absent | Found::Null => Ok(None),
            Found::Text(t) if t.is_empty() => Ok(None),
            Found::Text(t) => Ok(Some(t)),
            Found::Composite(v) => Err(format!(
                "field {name}: {sel} is {}, not a text or number",
                if matches!(v, Json::Array(_)) {
                    "an array"
                } else {
                    "an object"
                }
            )),
        }
    }

    /// A required field's text.
    fn required<'r>(&self, record: &'r Record, name: &str) -> Result<Cow<'r, str>, String> {
        self.text(record, name)?
            .ok_or_else(|| match self.selector(name) {
                Some(sel) => format!("field {name}: {}", record.describe_absent(sel)),
                None => format!("field {name} is not mapped"),
            })
    }

    /// An enum field's canonical value: translated by `values`, else taken as it is.
    fn canonical<'v>(
        &'v self,
        name: &str,
        raw: &'v str,
        canonical: &[&str],
    ) -> Result<&'v str, String> {
        let mapped = self
            .values
            .get(name)
            .and_then(|m| m.get(raw))
            .map(String::as_str);
        let value = mapped.unwrap_or(raw);
        if canonical.contains(&value) {
            return Ok(value);
        }
        Err(match mapped {
            Some(m) => format!(
                "field {name}: values.{name} translates {raw:?} to {m:?}, which is not one of {}",
                canonical.join(", ")
            ),
            None => format!(
                "field {name}: {raw:?} is not one of {} and values.{name} does not translate it",
                canonical.join(", ")
            ),
        })
    }

    fn build(&self, record: &Record, year: u16) -> Result<Body, String> {
        match self.kind {
            Kind::ShipmentSort => self.sort(record),
            Kind::EquipmentState => self.state(record),
            Kind::ShipmentScan => self.scan(record, Role::Packing, year),
            Kind::InventoryScan => self.scan(record, Role::Receiving, year),
            Kind::ShipmentWeight | Kind::Exception => {
                Err(format!("kind {} cannot be made by a rule", self.kind))
            }
        }
    }

    fn sort(&self, record: &Record) -> Result<Body, String> {
        let result = self.required(record, "result")?;
        let result = match self.canonical("result", &result, SORT_RESULTS)? {
            "diverted" => SortResult::Diverted,
            "recirculated" => SortResult::Recirculated,
            "no_read" => SortResult::NoRead,
            "full" => SortResult::Full,
            _ => SortResult::Fault,
        };
        let code = self.text(record, "code")?;
        let sscc = match self.text(record, "sscc")? {
            Some(s) => Some(sscc_of(&s).ok_or_else(|| {
                format!("field sscc: {s:?} is not an SSCC (18 digits with a valid check digit)")
            })?),
            None => code.as_deref().and_then(sscc_of),
        };
        Ok(Body::ShipmentSort(ShipmentSort {
            code: code.map(Cow::into_owned),
            sscc,
            destination: self.text(record, "destination")?.map(Cow::into_owned),
            result,
        }))
    }

    fn state(&self, record: &Record) -> Result<Body, String> {
        let state = self.required(record, "state")?;
        let state = match self.canonical("state", &state, STATES)? {
            "running" => EquipmentStateValue::Running,
            "stopped" => EquipmentStateValue::Stopped,
            _ => EquipmentStateValue::Fault,
        };
        Ok(Body::EquipmentState(EquipmentState {
            state,
            code: self.text(record, "code")?.map(Cow::into_owned),
            message: self.text(record, "message")?.map(Cow::into_owned),
        }))
    }

    fn scan(&self, record: &Record, side: Role, year: u16) -> Result<Body, String> {
        let code = self.required(record, "code")?;
        let mut scan = barcode::classify_code(&code);
        if scan.symbology == "unknown" {
            if let Some(s) = self.text(record, "symbology")? {
                scan.symbology = s.into_owned();
            }
        }
        Ok(barcode::to_body(Decoded::Scan(scan), Some(side), year))
    }
}

/// The SSCC in a code: AI 00 of a GS1 code, or 18 digits with a valid check digit.
fn sscc_of(code: &str) -> Option<String> {
    if code.len() == 18 && gs1::check_digit_ok(code) {
        return Some(code.to_owned());
    }
    barcode::classify_code(code)
        .gs1
        .and_then(|e| e.sscc().map(str::to_owned))
}

/// Maps a record by the first rule whose `when` holds. No match, or a match whose fields
/// cannot be mapped, is `Err` with the detail for a person (the agent makes it an
/// `undecodable` exception carrying the raw bytes).
pub fn apply(rules: &[Rule], record: &Record, year: u16) -> Result<Body, String> {
    for (n, rule) in rules.iter().enumerate() {
        if rule
            .matches(record)
            .map_err(|e| format!("rule {}: {e}", n + 1))?
        {
            return rule
                .build(record, year)
                .map_err(|e| format!("rule {} ({}): {e}", n + 1, rule.kind));
        }
    }
    if rules.is_empty() {
        return Err("no rules are configured for this source".into());
    }
    let why: Vec<String> = rules
        .iter()
        .take(4)
        .enumerate()
        .map(|(n, r)| format!("rule {}: {}", n + 1, r.mismatch(record)))
        .collect();
    let more = if rules.len() > 4 { "; …" } else { "" };
    Err(format!("no rule matches ({}{more})", why.join("; ")))
}

/// Checks a rule against its kind: the kind is one rules make, every field exists in that
/// kind's body and none is mapped twice, required fields are mapped, `values` appear only for
/// mapped enum fields and translate to canonical values. Returns every problem, each naming
/// its key relative to the rule.
pub fn check_rule(rule: &Rule) -> Vec<String> {
    let Some(spec) = spec(rule.kind) else {
        return vec![format!(
            "kind: {} cannot be made by a rule (rules make shipment.sort, equipment.state, shipment.scan, inventory.scan)",
            rule.kind
        )];
    };
    let mut problems = Vec::new();
    for (i, (name, _)) in rule.fields.iter().enumerate() {
        if !spec.iter().any(|f| f.name == name) {
            problems.push(format!(
                "fields.{name}: {} has no field {name} (it has {})",
                rule.kind,
                names(spec)
            ));
        } else if rule.fields[..i].iter().any(|(n, _)| n == name) {
            problems.push(format!("fields.{name}: mapped twice"));
        }
    }
    for f in spec.iter().filter(|f| f.required) {
        if rule.selector(f.name).is_none() {
            problems.push(format!("fields.{}: {} needs it mapped", f.name, rule.kind));
        }
    }
    for (name, map) in &rule.values {
        let Some(f) = spec
            .iter()
            .find(|f| f.name == name && !f.canonical.is_empty())
        else {
            let enums: Vec<_> = spec
                .iter()
                .filter(|f| !f.canonical.is_empty())
                .map(|f| f.name)
                .collect();
            problems.push(if enums.is_empty() {
                format!(
                    "values.{name}: {} has no field that takes values",
                    rule.kind
                )
            } else {
                format!("values.{name}: only {} can have values", enums.join(", "))
            });
            continue;
        };
        if rule.selector(name).is_none() {
            problems.push(format!("values.{name}: the field is not mapped in fields"));
        }
        for (raw, canonical) in map {
            if !f.canonical.contains(&canonical.as_str()) {
                problems.push(format!(
                    "values.{name}.{raw}: {canonical:?} is not one of {}",
                    f.canonical.join(", ")
                ));
            }
        }
    }
    problems
}

/// [`check_rule`], plus: every selector suits the records the source's decoder makes
/// (JSON pointers for `json`, column indexes for `delimited`).
pub fn check_rule_for(rule: &Rule, records: RecordKind) -> Vec<String> {
    let mut problems = check_rule(rule);
    let fits = |s: &Selector| {
        matches!(
            (records, s),
            (RecordKind::Json, Selector::Pointer(_)) | (RecordKind::Delimited, Selector::Column(_))
        )
    };
    let want = match records {
        RecordKind::Json => "a JSON pointer such as \"/type\" (decoder json)",
        RecordKind::Delimited => "a column index such as \"0\" (decoder delimited)",
    };
    for (sel, _) in rule.when.iter().filter(|(s, _)| !fits(s)) {
        let key = match sel {
            Selector::Pointer(p) => p.clone(),
            Selector::Column(c) => c.to_string(),
        };
        problems.push(format!("when.{key:?}: needs {want}"));
    }
    for (name, _) in rule.fields.iter().filter(|(_, s)| !fits(s)) {
        problems.push(format!("fields.{name}: needs {want}"));
    }
    problems
}

#[cfg(test)]
mod tests;
