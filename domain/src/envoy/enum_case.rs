//! Enum names in any case, as Envoy reads them: Envoy parses JSON and YAML with case-insensitive
//! enum names (`type: strict_dns`, `lb_policy: round_robin`, as its own examples write them),
//! where the protobuf JSON mapping wants the exact name. Before decoding, each enum name that
//! matches a value of its enum only without regard to case is replaced by that value's name, so
//! the canonical form stores `STRICT_DNS`.

use std::borrow::Cow;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::Value;

use super::POOL;

/// `json` (a message of type `desc`) with its enum names spelt as their enums spell them;
/// borrowed when nothing needed it.
pub(super) fn exact_enum_names<'a>(desc: &MessageDescriptor, json: &'a Value) -> Cow<'a, Value> {
    let mut fixed = json.clone();
    if fix_message(desc, &mut fixed) {
        Cow::Owned(fixed)
    } else {
        Cow::Borrowed(json)
    }
}

/// Fixes the enum names inside a message's JSON; whether it changed anything.
fn fix_message(desc: &MessageDescriptor, json: &mut Value) -> bool {
    let Value::Object(fields) = json else {
        return false;
    };
    let desc = if desc.full_name() == "google.protobuf.Any" {
        // An `Any` carries its message's fields beside `@type`.
        let Some(carried) = fields
            .get("@type")
            .and_then(Value::as_str)
            .and_then(|url| url.rsplit('/').next())
            .and_then(|name| POOL.get_message_by_name(name))
        else {
            return false;
        };
        carried
    } else {
        desc.clone()
    };
    if is_special_json(&desc) {
        return false;
    }
    let mut changed = false;
    for (key, value) in fields.iter_mut() {
        let Some(field) = desc
            .get_field_by_json_name(key)
            .or_else(|| desc.get_field_by_name(key))
        else {
            continue;
        };
        changed |= fix_field(&field, value);
    }
    changed
}

/// Fixes a field's value: an enum name, a list or map of them, or the messages inside.
fn fix_field(field: &FieldDescriptor, value: &mut Value) -> bool {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return false;
        };
        let value_field = entry.map_entry_value_field();
        let Value::Object(entries) = value else {
            return false;
        };
        return entries.values_mut().fold(false, |changed, item| {
            fix_single(&value_field, item) | changed
        });
    }
    if field.is_list() {
        let Value::Array(items) = value else {
            return false;
        };
        return items
            .iter_mut()
            .fold(false, |changed, item| fix_single(field, item) | changed);
    }
    fix_single(field, value)
}

/// Fixes one value of a field's type.
fn fix_single(field: &FieldDescriptor, value: &mut Value) -> bool {
    match field.kind() {
        Kind::Enum(enum_desc) => {
            let Value::String(name) = value else {
                return false;
            };
            if enum_desc.get_value_by_name(name).is_some() {
                return false;
            }
            match enum_desc
                .values()
                .find(|known| known.name().eq_ignore_ascii_case(name))
            {
                Some(known) => {
                    known.name().clone_into(name);
                    true
                }
                None => false,
            }
        }
        Kind::Message(inner) => fix_message(&inner, value),
        _ => false,
    }
}

/// Messages whose JSON is not their fields (`Struct`, `Value`, durations, wrappers, ...): no
/// enum of Envoy's inside.
fn is_special_json(desc: &MessageDescriptor) -> bool {
    desc.full_name().starts_with("google.protobuf.") && desc.full_name() != "google.protobuf.Any"
}
