//! Which values of a resource are secret material, read from Envoy's own schema.
//!
//! Envoy marks every field that holds secret material with the `udpa.annotations.sensitive`
//! option: the private key and password of a TLS certificate, a generic secret and its map of
//! secrets, session ticket keys, the credentials of basic and API-key authentication, AWS access
//! keys, Redis passwords, and so on. Those fields are found here by walking a resource's JSON with
//! its message descriptors: through nested messages, repeated fields, maps, and `Any` values by the
//! type they name (a `TypedStruct`, which would hide its payload's type, is not in the schema and
//! is refused by validation). A list of field names would miss the fields it does not
//! know and the camelCase spellings protobuf JSON accepts.
//!
//! The one rule about them ([`stored_material_violations`]): a resource keeps no sensitive value
//! in clear. In a secret, sensitive data sources are sealed (see [`crate::secrets`]); anywhere
//! else, and for sensitive values that are not data sources, only a reference to material held
//! by the proxy (a data source naming a file or an environment variable) or nothing is allowed.

use std::collections::HashSet;
use std::sync::LazyLock;

use prost_reflect::{Kind, MessageDescriptor};
use serde_json::Value;

use super::{ResourceKind, Violation, POOL};
use crate::json_pointer::escape;
use crate::secrets::SEALED_PREFIX;

/// The message type of Envoy's data sources: inline bytes or text, a file, or an environment
/// variable.
const DATA_SOURCE: &str = "envoy.config.core.v3.DataSource";

/// The full names of every field the schema marks sensitive.
static SENSITIVE_FIELDS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let Some(extension) = POOL.get_extension_by_name("udpa.annotations.sensitive") else {
        return HashSet::new();
    };
    POOL.all_messages()
        .flat_map(|message| message.fields().collect::<Vec<_>>())
        .filter(|field| {
            let options = field.options();
            options.has_extension(&extension)
                && options.get_extension(&extension).as_bool() == Some(true)
        })
        .map(|field| field.full_name().to_owned())
        .collect()
});

/// What a sensitive value holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Material {
    /// Nothing, or a data source naming a file or an environment variable on the proxy: no
    /// secret in the document itself.
    Reference,
    /// A data source sealed under a tenant's data key.
    Sealed,
    /// Secret material in clear.
    Clear,
}

/// One sensitive value of a document, as the walk meets it.
pub struct SensitiveValue<'a> {
    /// Its JSON pointer in the document.
    pub pointer: &'a str,
    /// Whether it is an Envoy data source (which can be sealed in place).
    pub data_source: bool,
    /// The value.
    pub value: &'a mut Value,
}

impl SensitiveValue<'_> {
    /// What the value holds.
    pub fn material(&self) -> Material {
        material_of(self.value, self.data_source)
    }
}

/// What `value` holds; `data_source` says whether the schema types it as a data source.
pub fn material_of(value: &Value, data_source: bool) -> Material {
    if is_empty(value) {
        return Material::Reference;
    }
    if !data_source {
        return Material::Clear;
    }
    let Value::Object(source) = value else {
        return Material::Clear;
    };
    let inline = [
        "inline_string",
        "inlineString",
        "inline_bytes",
        "inlineBytes",
    ]
    .iter()
    .find_map(|key| source.get(*key));
    match inline {
        Some(Value::String(text)) if text.starts_with(SEALED_PREFIX) => Material::Sealed,
        Some(inline) if !is_empty(inline) => Material::Clear,
        _ => Material::Reference,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(text) => text.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.values().all(is_empty),
        Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Calls `f` on every sensitive value of a `kind` document (each item of a repeated field, each
/// value of a map). Groups and templates have no Envoy schema and hold none.
pub fn for_each(kind: ResourceKind, document: &mut Value, f: &mut dyn FnMut(SensitiveValue<'_>)) {
    let Some(name) = kind.message_name() else {
        return;
    };
    let descriptor = POOL
        .get_message_by_name(name)
        .expect("the schema has every Envoy resource kind");
    walk(document, &descriptor, &mut String::new(), f);
}

/// The sensitive values of a document that it may not be stored with: material in clear
/// anywhere, and sealed material outside a secret (only a secret's material is opened, for the
/// tenant's own proxies).
pub fn stored_material_violations(kind: ResourceKind, document: &Value) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut copy = document.clone();
    for_each(kind, &mut copy, &mut |value| {
        let message = match (value.material(), kind, value.data_source) {
            (Material::Reference, ..) | (Material::Sealed, ResourceKind::Secret, _) => return,
            (Material::Clear, ResourceKind::Secret, true) => {
                "secret material must be sealed before it is stored".to_owned()
            }
            (Material::Clear, ResourceKind::Secret, false) => {
                "this sensitive field is not a data source, so it cannot be sealed: \
                 give it to the proxy through a file or an environment variable"
                    .to_owned()
            }
            (Material::Sealed, ..) => {
                "sealed material belongs in a secret; refer to the secret through SDS".to_owned()
            }
            (Material::Clear, ..) => format!(
                "secret material is not stored in a {kind}: put it in a secret and refer to it \
                 through SDS (for TLS: `tls_certificate_sds_secret_configs`, \
                 `validation_context_sds_secret_config`), or name a file or an environment \
                 variable on the proxy"
            ),
        };
        violations.push(Violation {
            pointer: value.pointer.to_owned(),
            message,
        });
    });
    violations
}

/// The document as it may be shown: every sensitive value but a reference replaced by
/// `{"redacted": true}` (which no write accepts).
pub fn redact(kind: ResourceKind, mut document: Value) -> Value {
    for_each(kind, &mut document, &mut |value| {
        if value.material() != Material::Reference {
            *value.value = serde_json::json!({ "redacted": true });
        }
    });
    document
}

fn walk(
    value: &mut Value,
    message: &MessageDescriptor,
    pointer: &mut String,
    f: &mut dyn FnMut(SensitiveValue<'_>),
) {
    if message.full_name() == "google.protobuf.Any" {
        if let Some(inner) = type_named(value.get("@type")) {
            walk(value, &inner, pointer, f);
        }
        return;
    }
    let Value::Object(map) = value else {
        return;
    };
    for (key, inner) in map.iter_mut() {
        let Some(field) = message
            .get_field_by_name(key)
            .or_else(|| message.get_field_by_json_name(key))
        else {
            continue;
        };
        let length = pointer.len();
        pointer.push('/');
        pointer.push_str(&escape(key));
        let target = match field.kind() {
            Kind::Message(target) if field.is_map() => {
                match target.map_entry_value_field().kind() {
                    Kind::Message(value_type) => Some(value_type),
                    _ => None,
                }
            }
            Kind::Message(target) => Some(target),
            _ => None,
        };
        let data_source = target
            .as_ref()
            .is_some_and(|target| target.full_name() == DATA_SOURCE);
        let sensitive = SENSITIVE_FIELDS.contains(field.full_name());
        for (item_pointer, item) in items(inner, field.is_list(), field.is_map(), pointer) {
            if sensitive {
                f(SensitiveValue {
                    pointer: &item_pointer,
                    data_source,
                    value: item,
                });
            } else if let Some(target) = &target {
                let mut item_pointer = item_pointer;
                walk(item, target, &mut item_pointer, f);
            }
        }
        pointer.truncate(length);
    }
}

/// The values a field holds, with their pointers: the items of a list, the values of a map, or
/// the value itself.
fn items<'a>(
    value: &'a mut Value,
    list: bool,
    map: bool,
    pointer: &str,
) -> Vec<(String, &'a mut Value)> {
    if list && value.is_array() {
        let Value::Array(items) = value else {
            unreachable!("checked above")
        };
        return items
            .iter_mut()
            .enumerate()
            .map(|(index, item)| (format!("{pointer}/{index}"), item))
            .collect();
    }
    if map && value.is_object() {
        let Value::Object(entries) = value else {
            unreachable!("checked above")
        };
        return entries
            .iter_mut()
            .map(|(key, item)| (format!("{pointer}/{}", escape(key)), item))
            .collect();
    }
    vec![(pointer.to_owned(), value)]
}

/// The message a type URL names, if the schema knows it.
fn type_named(type_url: Option<&Value>) -> Option<MessageDescriptor> {
    let name = type_url?.as_str()?.rsplit('/').next()?;
    POOL.get_message_by_name(name)
}

/// The full names of every field the schema marks sensitive, sorted: for the documentation and
/// its test.
pub fn sensitive_field_names() -> Vec<String> {
    let mut names: Vec<String> = SENSITIVE_FIELDS.iter().cloned().collect();
    names.sort();
    names
}

#[cfg(test)]
#[path = "sensitive_tests.rs"]
mod tests;
