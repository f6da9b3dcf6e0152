//! Reading one section or list entry of the document tree so that every problem in it is found.
//!
//! serde stops at the first error, and `deny_unknown_fields` at the first unknown key. So a
//! table is read again and again: each failing key is reported with its path, then set aside
//! (removed so its default applies, or replaced by a stand-in value when it is required) and
//! the table read once more, until it reads. Keys set aside are *poisoned*: no later problem
//! is reported under them, so a stand-in value never yields a second, misleading message, and
//! the semantic checks still run on everything else.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use serde_path_to_error::Segment;

use super::Problem;

mod wording;

pub(super) use wording::{closest, shown};
use wording::{enum_noun, expected_names, found_of, humanize, quoted_after, unknown_key};

/// Readings of one table may take at most this many attempts (each failing key takes one to
/// a few); a table that still does not read is given up, its problems reported.
const MAX_ATTEMPTS: usize = 512;

/// Values tried in turn in place of a required key that failed, until the table reads.
/// An enum key gets its first variant instead, taken from serde's message.
const STAND_INS: usize = 5;

fn stand_in(n: usize) -> Option<Value> {
    match n {
        0 => Some(Value::String(String::new())),
        1 => Some(Value::from(0)),
        2 => Some(Value::Bool(false)),
        3 => Some(Value::Array(Vec::new())),
        4 => Some(Value::Object(Map::new())),
        _ => None,
    }
}

/// Problems found so far, and the keys whose values were set aside.
#[derive(Default)]
pub(super) struct Collector {
    pub(super) problems: Vec<Problem>,
    poisoned: HashSet<String>,
}

impl Collector {
    /// Records a problem, unless its key (or a table it is in) has been reported already.
    pub(super) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        if self.is_poisoned(&key) {
            return;
        }
        self.problems.push(Problem {
            key,
            message: message.into(),
        });
    }

    /// Marks `key` as reported: problems under it are not recorded any more.
    pub(super) fn poison(&mut self, key: impl Into<String>) {
        self.poisoned.insert(key.into());
    }

    /// Whether `key` or a table holding it was set aside (its value is a default or stand-in).
    pub(super) fn is_poisoned(&self, key: &str) -> bool {
        self.poisoned.iter().any(|p| {
            key.strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }

    /// Reads `value` as `T`, recording every failing key under `prefix` (`table` is how the
    /// table is written, e.g. `[[sources.serial]]`, for the message when it is not a table).
    /// None only when the table could not be read even with its failing keys set aside.
    pub(super) fn read<T: DeserializeOwned>(
        &mut self,
        prefix: &str,
        mut value: Value,
        table: &str,
    ) -> Option<T> {
        if !value.is_object() {
            self.push(
                prefix,
                format!(
                    "{} is not a table; write {table} with its keys",
                    shown(&value)
                ),
            );
            self.poison(prefix);
            value = Value::Object(Map::new());
        }
        let reported = self.problems.len();
        // Values set aside, by path: how many stand-ins each has had.
        let mut set_aside: HashMap<Vec<Step>, usize> = HashMap::new();
        // Values of the wrong type reported, by path: the problem and the value as written.
        let mut wrong_type: HashMap<Vec<Step>, (usize, String)> = HashMap::new();
        for _ in 0..MAX_ATTEMPTS {
            let err = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            let mut steps = steps_of(err.path());
            let msg = err.into_inner().to_string();

            if let Some(field) = quoted_after(&msg, "missing field ") {
                steps.push(Step::Key(field.to_string()));
                if !set_aside.contains_key(&steps) {
                    let key = key_of(prefix, &steps);
                    self.push(&key, format!("required key `{field}` is missing"));
                    self.poison(key);
                }
                if !replace(&mut value, &mut set_aside, steps, &msg) {
                    break;
                }
                continue;
            }

            if let Some(field) = quoted_after(&msg, "unknown field ") {
                if steps.last() != Some(&Step::Key(field.to_string())) {
                    steps.push(Step::Key(field.to_string()));
                }
                let key = key_of(prefix, &steps);
                self.push(&key, unknown_key(field, &msg));
                self.poison(key);
                if !put(&mut value, &steps, None) {
                    break;
                }
                continue;
            }

            // A stand-in that does not fit: try the next one.
            if let Some(outer) = set_aside.keys().find(|s| steps.starts_with(s)).cloned() {
                // An enum key of the wrong type: its stand-in shows which names it takes.
                if let (Some((i, found)), Some(_)) = (
                    wrong_type.remove(&outer),
                    quoted_after(&msg, "unknown variant "),
                ) {
                    if let (Some(p), Some(Step::Key(field))) =
                        (self.problems.get_mut(i), outer.last())
                    {
                        p.message = format!(
                            "{found} is not {}; use one of {}",
                            enum_noun(field),
                            expected_names(&msg).join(", ")
                        );
                    }
                }
                if !replace(&mut value, &mut set_aside, outer, &msg) {
                    break;
                }
                continue;
            }

            let Some(last) = steps.last().cloned() else {
                self.push(prefix, humanize(&msg, ""));
                break;
            };
            let key = key_of(prefix, &steps);
            let field = steps
                .iter()
                .rev()
                .find_map(|s| match s {
                    Step::Key(k) => Some(k.as_str()),
                    Step::Index(_) => None,
                })
                .unwrap_or("");
            if !self.is_poisoned(&key) {
                if let Some(found) = found_of(&msg) {
                    wrong_type.insert(steps.clone(), (self.problems.len(), found));
                }
            }
            self.push(&key, humanize(&msg, field));
            self.poison(key);
            match last {
                // Without it, its default applies; a required key comes back as missing.
                Step::Key(_) => {
                    if !put(&mut value, &steps, None) {
                        break;
                    }
                    set_aside.insert(steps, 0);
                }
                // A list element cannot be removed without renumbering the others.
                Step::Index(_) => {
                    if !replace(&mut value, &mut set_aside, steps, &msg) {
                        break;
                    }
                }
            }
        }
        if self.problems.len() == reported && !self.is_poisoned(prefix) {
            self.push(
                prefix,
                "could not be read; check its keys against config/agent.example.toml",
            );
        }
        self.poison(prefix);
        None
    }
}

/// One step of a path into the document tree.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Step {
    Key(String),
    Index(usize),
}

fn steps_of(path: &serde_path_to_error::Path) -> Vec<Step> {
    path.iter()
        .map_while(|s| match s {
            Segment::Map { key } => Some(Step::Key(key.clone())),
            Segment::Seq { index } => Some(Step::Index(*index)),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect()
}

/// `prefix` followed by `steps` in the project's key form: `sources.serial[1].rules[0].kind`.
fn key_of(prefix: &str, steps: &[Step]) -> String {
    let mut key = prefix.to_string();
    for s in steps {
        match s {
            Step::Key(k) => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
            }
            Step::Index(i) => {
                let _ = write!(key, "[{i}]");
            }
        }
    }
    key
}

fn value_at<'a>(value: &'a mut Value, steps: &[Step]) -> Option<&'a mut Value> {
    steps.iter().try_fold(value, |v, s| match s {
        Step::Key(k) => v.as_object_mut()?.get_mut(k),
        Step::Index(i) => v.as_array_mut()?.get_mut(*i),
    })
}

/// Sets (Some) or removes (None) the value at `steps`; false if there is no such place.
fn put(value: &mut Value, steps: &[Step], new: Option<Value>) -> bool {
    let Some((last, parent)) = steps.split_last() else {
        return false;
    };
    match (last, value_at(value, parent), new) {
        (Step::Key(k), Some(Value::Object(m)), None) => m.remove(k).is_some(),
        (Step::Key(k), Some(Value::Object(m)), Some(new)) => {
            m.insert(k.clone(), new);
            true
        }
        (Step::Index(i), Some(Value::Array(a)), Some(new)) => match a.get_mut(*i) {
            Some(slot) => {
                *slot = new;
                true
            }
            None => false,
        },
        _ => false,
    }
}

/// Puts the next stand-in at `steps`; false when none is left.
fn replace(
    value: &mut Value,
    set_aside: &mut HashMap<Vec<Step>, usize>,
    steps: Vec<Step>,
    msg: &str,
) -> bool {
    let tried = set_aside.entry(steps.clone()).or_insert(0);
    if *tried > STAND_INS {
        return false;
    }
    // An enum says which names it takes: the first one reads.
    let next = match quoted_after(msg, "unknown variant ").map(|_| expected_names(msg)) {
        Some(names) if !names.is_empty() => Some(Value::String(names[0].to_string())),
        _ => stand_in(*tried),
    };
    *tried += 1;
    match next {
        Some(v) => put(value, &steps, Some(v)),
        None => false,
    }
}
