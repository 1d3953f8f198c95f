//! What each kind of `validate.rules` demands of one value: bounds on numbers and durations,
//! lengths and affixes of strings and bytes, defined enum values, item and entry rules of repeated
//! fields and maps, allowed `Any` types. The walk that finds the values is in `rules.rs`.

use std::borrow::Cow;

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, Value};

use super::{bool_of, map_key_text, nested, string_of, violation};
use crate::envoy::Violation;
use crate::json_pointer::escape;

/// Applies one field's rules to its value.
pub(super) fn apply(
    field: &FieldDescriptor,
    value: &Value,
    set: bool,
    rules: &DynamicMessage,
    pointer: &str,
    out: &mut Vec<Violation>,
) {
    // A member of a oneof that is not the chosen one has nothing to check.
    if field.containing_oneof().is_some() && !set {
        return;
    }
    if let Some(message_rules) = nested(rules, "message") {
        if bool_of(&message_rules, "required") && !set {
            violation(out, pointer, "is required".to_owned());
        }
    }
    for (rule_field, rule_value) in rules.fields() {
        let Value::Message(typed) = rule_value else {
            continue;
        };
        match rule_field.name() {
            "message" => {}
            "repeated" => {
                if let Value::List(items) = value {
                    repeated_rules(items, typed, pointer, out);
                }
            }
            "map" => {
                if let Value::Map(entries) = value {
                    map_rules(entries, typed, pointer, out);
                }
            }
            "duration" | "timestamp" | "any" => {
                if !set {
                    if bool_of(typed, "required") {
                        violation(out, pointer, "is required".to_owned());
                    }
                } else if let Value::Message(inner) = value {
                    match rule_field.name() {
                        "duration" => duration_rules(inner, typed, pointer, out),
                        "any" => any_rules(inner, typed, pointer, out),
                        _ => {}
                    }
                }
            }
            kind => {
                // Scalar rules: on a wrapper message they apply to its `value`, when it is set; on a
                // field with presence (in a oneof, `optional`) only when it is set.
                if field.supports_presence() && !set {
                    continue;
                }
                let scalar = match value {
                    Value::Message(wrapper) => match wrapper.get_field_by_name("value") {
                        Some(inner) => inner.into_owned(),
                        None => continue,
                    },
                    other => other.clone(),
                };
                scalar_rules(kind, field, &scalar, typed, pointer, out);
            }
        }
    }
}

fn scalar_rules(
    kind: &str,
    field: &FieldDescriptor,
    value: &Value,
    rules: &DynamicMessage,
    pointer: &str,
    out: &mut Vec<Violation>,
) {
    match kind {
        "string" => string_rules(value.as_str().unwrap_or_default(), rules, pointer, out),
        "bytes" => {
            let length = value.as_bytes().map_or(0, prost_reflect::bytes::Bytes::len);
            length_rules(
                length,
                rules,
                ("min_len", "max_len", "len"),
                "bytes",
                pointer,
                out,
            );
        }
        "enum" => {
            let number = value.as_enum_number().unwrap_or_default();
            if bool_of(rules, "defined_only") {
                if let Kind::Enum(desc) = field.kind() {
                    if desc.get_value(number).is_none() {
                        violation(out, pointer, format!("{number} is not a defined value"));
                    }
                }
            }
            number_rules(f64::from(number), rules, pointer, out);
        }
        "bool" => {
            if let (Some(expected), Some(actual)) = (
                rules
                    .get_field_by_name("const")
                    .filter(|_| rules.has_field_by_name("const")),
                value.as_bool(),
            ) {
                if expected.as_bool() != Some(actual) {
                    violation(
                        out,
                        pointer,
                        format!("must be {}", expected.as_bool().unwrap_or(false)),
                    );
                }
            }
        }
        _ => {
            if let Some(number) = as_f64(value) {
                if !(rules_ignore_empty(rules) && number == 0.0) {
                    number_rules(number, rules, pointer, out);
                }
            }
        }
    }
}

fn number_rules(number: f64, rules: &DynamicMessage, pointer: &str, out: &mut Vec<Violation>) {
    let bound = |name: &str| {
        rules
            .has_field_by_name(name)
            .then(|| rules.get_field_by_name(name).and_then(|v| as_f64(&v)))
            .flatten()
    };
    if let Some(expected) = bound("const") {
        if (number - expected).abs() > f64::EPSILON {
            violation(out, pointer, format!("must be {}", show(expected)));
        }
    }
    let (gt, gte, lt, lte) = (bound("gt"), bound("gte"), bound("lt"), bound("lte"));
    let lower_ok = gt.is_none_or(|gt| number > gt) && gte.is_none_or(|gte| number >= gte);
    let upper_ok = lt.is_none_or(|lt| number < lt) && lte.is_none_or(|lte| number <= lte);
    if !lower_ok || !upper_ok {
        let mut parts = Vec::new();
        if let Some(gt) = gt {
            parts.push(format!("greater than {}", show(gt)));
        }
        if let Some(gte) = gte {
            parts.push(format!("at least {}", show(gte)));
        }
        if let Some(lt) = lt {
            parts.push(format!("less than {}", show(lt)));
        }
        if let Some(lte) = lte {
            parts.push(format!("at most {}", show(lte)));
        }
        violation(
            out,
            pointer,
            format!(
                "{} is out of range: must be {}",
                show(number),
                parts.join(" and ")
            ),
        );
    }
    list_rules(
        rules,
        |item| as_f64(item).is_some_and(|x| (x - number).abs() < f64::EPSILON),
        pointer,
        out,
    );
}

fn string_rules(text: &str, rules: &DynamicMessage, pointer: &str, out: &mut Vec<Violation>) {
    if rules_ignore_empty(rules) && text.is_empty() {
        return;
    }
    length_rules(
        text.chars().count(),
        rules,
        ("min_len", "max_len", "len"),
        "characters",
        pointer,
        out,
    );
    length_rules(
        text.len(),
        rules,
        ("min_bytes", "max_bytes", "len_bytes"),
        "bytes",
        pointer,
        out,
    );
    let text_rule = |name: &str| {
        rules
            .has_field_by_name(name)
            .then(|| string_of(rules, name))
    };
    if let Some(expected) = text_rule("const") {
        if text != expected {
            violation(out, pointer, format!("must be `{expected}`"));
        }
    }
    if let Some(prefix) = text_rule("prefix") {
        if !text.starts_with(&prefix) {
            violation(out, pointer, format!("must start with `{prefix}`"));
        }
    }
    if let Some(suffix) = text_rule("suffix") {
        if !text.ends_with(&suffix) {
            violation(out, pointer, format!("must end with `{suffix}`"));
        }
    }
    if let Some(part) = text_rule("contains") {
        if !text.contains(&part) {
            violation(out, pointer, format!("must contain `{part}`"));
        }
    }
    if let Some(part) = text_rule("not_contains") {
        if text.contains(&part) {
            violation(out, pointer, format!("must not contain `{part}`"));
        }
    }
    list_rules(rules, |item| item.as_str() == Some(text), pointer, out);
}

fn length_rules(
    length: usize,
    rules: &DynamicMessage,
    (min, max, exact): (&str, &str, &str),
    unit: &str,
    pointer: &str,
    out: &mut Vec<Violation>,
) {
    let limit = |name: &str| {
        rules
            .has_field_by_name(name)
            .then(|| rules.get_field_by_name(name).and_then(|v| v.as_u64()))
            .flatten()
    };
    let length = length as u64;
    if let Some(min) = limit(min) {
        if length < min {
            let message = if min == 1 {
                "must not be empty".to_owned()
            } else {
                format!("must have at least {min} {unit}")
            };
            violation(out, pointer, message);
        }
    }
    if let Some(max) = limit(max) {
        if length > max {
            violation(out, pointer, format!("must have at most {max} {unit}"));
        }
    }
    if let Some(exact) = limit(exact) {
        if length != exact {
            violation(out, pointer, format!("must have exactly {exact} {unit}"));
        }
    }
}

/// `in` and `not_in`: `matches` tells whether a listed value equals the field's value.
fn list_rules(
    rules: &DynamicMessage,
    matches: impl Fn(&Value) -> bool,
    pointer: &str,
    out: &mut Vec<Violation>,
) {
    if let Some(Value::List(allowed)) = rules.get_field_by_name("in").map(Cow::into_owned) {
        if !allowed.is_empty() && !allowed.iter().any(&matches) {
            violation(out, pointer, "is not one of the allowed values".to_owned());
        }
    }
    if let Some(Value::List(denied)) = rules.get_field_by_name("not_in").map(Cow::into_owned) {
        if denied.iter().any(&matches) {
            violation(
                out,
                pointer,
                "is one of the values not allowed here".to_owned(),
            );
        }
    }
}

fn repeated_rules(
    items: &[Value],
    rules: &DynamicMessage,
    pointer: &str,
    out: &mut Vec<Violation>,
) {
    if rules_ignore_empty(rules) && items.is_empty() {
        return;
    }
    length_rules(
        items.len(),
        rules,
        ("min_items", "max_items", "len_items"),
        "items",
        pointer,
        out,
    );
    if let Some(item_rules) = nested(rules, "items") {
        for (index, item) in items.iter().enumerate() {
            let item_pointer = format!("{pointer}/{index}");
            item_rule(item, &item_rules, &item_pointer, out);
        }
    }
}

fn map_rules(
    entries: &std::collections::HashMap<MapKey, Value>,
    rules: &DynamicMessage,
    pointer: &str,
    out: &mut Vec<Violation>,
) {
    if rules_ignore_empty(rules) && entries.is_empty() {
        return;
    }
    length_rules(
        entries.len(),
        rules,
        ("min_pairs", "max_pairs", "len_pairs"),
        "entries",
        pointer,
        out,
    );
    let key_rules = nested(rules, "keys");
    let value_rules = nested(rules, "values");
    for (key, value) in entries {
        let entry_pointer = format!("{pointer}/{}", escape(&map_key_text(key)));
        if let Some(key_rules) = &key_rules {
            item_rule(&map_key_value(key), key_rules, &entry_pointer, out);
        }
        if let Some(value_rules) = &value_rules {
            item_rule(value, value_rules, &entry_pointer, out);
        }
    }
}

/// Applies `FieldRules` to one element of a list or map.
fn item_rule(item: &Value, rules: &DynamicMessage, pointer: &str, out: &mut Vec<Violation>) {
    for (rule_field, rule_value) in rules.fields() {
        let Value::Message(typed) = rule_value else {
            continue;
        };
        match (rule_field.name(), item) {
            ("message" | "repeated" | "map", _) => {}
            ("duration", Value::Message(inner)) => duration_rules(inner, typed, pointer, out),
            ("any", Value::Message(inner)) => any_rules(inner, typed, pointer, out),
            ("string", Value::String(text)) => string_rules(text, typed, pointer, out),
            ("enum", Value::EnumNumber(number)) => {
                number_rules(f64::from(*number), typed, pointer, out);
            }
            (_, Value::Message(wrapper)) => {
                if let Some(number) = wrapper.get_field_by_name("value").and_then(|v| as_f64(&v)) {
                    number_rules(number, typed, pointer, out);
                }
            }
            (_, scalar) => {
                if let Some(number) = as_f64(scalar) {
                    number_rules(number, typed, pointer, out);
                }
            }
        }
    }
}

fn duration_rules(
    duration: &DynamicMessage,
    rules: &DynamicMessage,
    pointer: &str,
    out: &mut Vec<Violation>,
) {
    let nanos = |message: &DynamicMessage| {
        let seconds = message
            .get_field_by_name("seconds")
            .and_then(|v| v.as_i64())
            .unwrap_or(0);
        let nanos = message
            .get_field_by_name("nanos")
            .and_then(|v| v.as_i32())
            .unwrap_or(0);
        i128::from(seconds) * 1_000_000_000 + i128::from(nanos)
    };
    let value = nanos(duration);
    let bound = |name: &str| nested(rules, name).map(|message| nanos(&message));
    let show = |n: i128| {
        let (seconds, nanos) = (n / 1_000_000_000, (n % 1_000_000_000).abs());
        if nanos == 0 {
            format!("{seconds}s")
        } else {
            format!("{seconds}.{nanos:09}s")
        }
    };
    if let Some(expected) = bound("const") {
        if value != expected {
            violation(out, pointer, format!("must be {}", show(expected)));
        }
    }
    let checks = [
        (
            bound("gt"),
            value > bound("gt").unwrap_or(0),
            "greater than",
        ),
        (bound("gte"), value >= bound("gte").unwrap_or(0), "at least"),
        (bound("lt"), value < bound("lt").unwrap_or(0), "less than"),
        (bound("lte"), value <= bound("lte").unwrap_or(0), "at most"),
    ];
    for (limit, ok, words) in checks {
        if let Some(limit) = limit {
            if !ok {
                violation(
                    out,
                    pointer,
                    format!(
                        "{} is out of range: must be {words} {}",
                        show(value),
                        show(limit)
                    ),
                );
            }
        }
    }
}

fn any_rules(
    any: &DynamicMessage,
    rules: &DynamicMessage,
    pointer: &str,
    out: &mut Vec<Violation>,
) {
    let type_url = string_of(any, "type_url");
    list_rules(
        rules,
        |item| item.as_str() == Some(type_url.as_str()),
        pointer,
        out,
    );
}

fn rules_ignore_empty(rules: &DynamicMessage) -> bool {
    bool_of(rules, "ignore_empty")
}

#[allow(clippy::cast_precision_loss)]
fn as_f64(value: &Value) -> Option<f64> {
    match value {
        Value::I32(n) | Value::EnumNumber(n) => Some(f64::from(*n)),
        Value::I64(n) => Some(*n as f64),
        Value::U32(n) => Some(f64::from(*n)),
        Value::U64(n) => Some(*n as f64),
        Value::F32(n) => Some(f64::from(*n)),
        Value::F64(n) => Some(*n),
        _ => None,
    }
}

fn show(number: f64) -> String {
    if number.fract() == 0.0 && number.abs() < 1e15 {
        format!("{number:.0}")
    } else {
        number.to_string()
    }
}

fn map_key_value(key: &MapKey) -> Value {
    match key {
        MapKey::Bool(b) => Value::Bool(*b),
        MapKey::I32(n) => Value::I32(*n),
        MapKey::I64(n) => Value::I64(*n),
        MapKey::U32(n) => Value::U32(*n),
        MapKey::U64(n) => Value::U64(*n),
        MapKey::String(s) => Value::String(s.clone()),
    }
}
