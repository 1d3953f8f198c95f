//! Envoy's `validate.rules` (protoc-gen-validate) checked on a decoded message.
//!
//! Envoy's `.proto` files carry their constraints as field options: `connect_timeout` must be
//! greater than zero, a port at most 65535, a cluster name in a load assignment non-empty, one of
//! a oneof set. They are read from the descriptor pool itself, so every rule of every message and
//! extension applies, not a hand-picked list. Not checked: `pattern` and `well_known` string rules
//! (regular expressions in RE2's dialect) and `unique` on repeated fields. What Envoy checks in its
//! own code beyond these rules (a filter without its configuration, a `safe_regex` that does not
//! compile, a domain claimed twice, a protocol options key naming no extension) is in
//! `rules/envoy_code.rs`.
//!
//! This file walks a message: each field, each list item and map entry, and the message an `Any`
//! carries, keeping the JSON pointer of where it stands. What each kind of rule demands of one
//! value (numbers, strings, lengths, durations, repeated fields, maps, `Any` types) is in
//! `rules/per_type.rs`.

mod envoy_code;
mod per_type;

use std::sync::LazyLock;

use prost_reflect::{
    DynamicMessage, ExtensionDescriptor, FieldDescriptor, MapKey, ReflectMessage as _, Value,
};

use self::per_type::apply;
use super::{Violation, POOL};
use crate::json_pointer::escape;

static FIELD_RULES: LazyLock<Option<ExtensionDescriptor>> =
    LazyLock::new(|| POOL.get_extension_by_name("validate.rules"));
static ONEOF_REQUIRED: LazyLock<Option<ExtensionDescriptor>> =
    LazyLock::new(|| POOL.get_extension_by_name("validate.required"));
static MESSAGE_DISABLED: LazyLock<Option<ExtensionDescriptor>> =
    LazyLock::new(|| POOL.get_extension_by_name("validate.disabled"));
static MESSAGE_IGNORED: LazyLock<Option<ExtensionDescriptor>> =
    LazyLock::new(|| POOL.get_extension_by_name("validate.ignored"));

/// Checks `message` and everything inside it; appends what fails to `out`. `pointer` is where
/// `message` stands in the submitted JSON.
pub(super) fn check(message: &DynamicMessage, pointer: &mut String, out: &mut Vec<Violation>) {
    let desc = message.descriptor();
    let options = desc.options();
    if flag(&options, &MESSAGE_DISABLED) || flag(&options, &MESSAGE_IGNORED) {
        return;
    }
    for oneof in desc.oneofs() {
        if flag(&oneof.options(), &ONEOF_REQUIRED)
            && !oneof.fields().any(|field| message.has_field(&field))
        {
            let names: Vec<_> = oneof
                .fields()
                .map(|field| field.name().to_owned())
                .collect();
            violation(
                out,
                pointer,
                format!("one of {} is required", names.join(", ")),
            );
        }
    }
    envoy_code::check(message, pointer, out);
    for field in desc.fields() {
        let length = pointer.len();
        pointer.push('/');
        pointer.push_str(field.name());
        let set = message.has_field(&field);
        let value = message.get_field(&field);
        let rules = field_rules(&field);
        let mut skip_inner = false;
        if let Some(rules) = &rules {
            skip_inner = nested(rules, "message").is_some_and(|m| bool_of(&m, "skip"));
            apply(&field, &value, set, rules, pointer, out);
        }
        if set && !skip_inner {
            descend(&value, pointer, out);
        }
        pointer.truncate(length);
    }
}

/// Checks the messages inside a field's value.
fn descend(value: &Value, pointer: &mut String, out: &mut Vec<Violation>) {
    match value {
        Value::Message(inner) => check_message_or_any(inner, pointer, out),
        Value::List(items) => {
            for (index, item) in items.iter().enumerate() {
                if let Value::Message(inner) = item {
                    let length = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&index.to_string());
                    check_message_or_any(inner, pointer, out);
                    pointer.truncate(length);
                }
            }
        }
        Value::Map(entries) => {
            for (key, item) in entries {
                if let Value::Message(inner) = item {
                    let length = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&escape(&map_key_text(key)));
                    check_message_or_any(inner, pointer, out);
                    pointer.truncate(length);
                }
            }
        }
        _ => {}
    }
}

/// An `Any` is checked as the message it carries (its fields sit beside `@type` in JSON).
fn check_message_or_any(message: &DynamicMessage, pointer: &mut String, out: &mut Vec<Violation>) {
    if message.descriptor().full_name() != "google.protobuf.Any" {
        check(message, pointer, out);
        return;
    }
    let type_url = string_of(message, "type_url");
    let Some(name) = type_url.rsplit('/').next().filter(|name| !name.is_empty()) else {
        return;
    };
    let Some(desc) = POOL.get_message_by_name(name) else {
        violation(out, pointer, format!("unknown type `{type_url}`"));
        return;
    };
    let bytes = message
        .get_field_by_name("value")
        .and_then(|value| value.as_bytes().cloned())
        .unwrap_or_default();
    match DynamicMessage::decode(desc, bytes) {
        Ok(inner) => check(&inner, pointer, out),
        Err(error) => violation(
            out,
            pointer,
            format!("`{type_url}` does not decode: {error}"),
        ),
    }
}

/// The `validate.rules` of a field, if it has any.
fn field_rules(field: &FieldDescriptor) -> Option<DynamicMessage> {
    let extension = FIELD_RULES.as_ref()?;
    let options = field.options();
    if !options.has_extension(extension) {
        return None;
    }
    match options.get_extension(extension).into_owned() {
        Value::Message(rules) => Some(rules),
        _ => None,
    }
}

fn flag(options: &DynamicMessage, extension: &LazyLock<Option<ExtensionDescriptor>>) -> bool {
    extension.as_ref().is_some_and(|extension| {
        options.has_extension(extension) && options.get_extension(extension).as_bool() == Some(true)
    })
}

fn nested(message: &DynamicMessage, name: &str) -> Option<DynamicMessage> {
    if !message.has_field_by_name(name) {
        return None;
    }
    match message.get_field_by_name(name)?.into_owned() {
        Value::Message(inner) => Some(inner),
        _ => None,
    }
}

fn bool_of(message: &DynamicMessage, name: &str) -> bool {
    message
        .get_field_by_name(name)
        .and_then(|value| value.as_bool())
        .unwrap_or(false)
}

fn string_of(message: &DynamicMessage, name: &str) -> String {
    message
        .get_field_by_name(name)
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn map_key_text(key: &MapKey) -> String {
    match key {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

fn violation(out: &mut Vec<Violation>, pointer: &str, message: String) {
    out.push(Violation {
        pointer: pointer.to_owned(),
        message,
    });
}
