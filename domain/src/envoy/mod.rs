//! Envoy resources and their validation against Envoy's real schema (FR-EP-003).
//!
//! The schema is compiled from the `.proto` files envoy-types ships (see `build.rs`) into a
//! [`prost_reflect::DescriptorPool`]. A resource's JSON (protobuf JSON mapping, `typed_config` with
//! `@type`) is decoded into a dynamic message: unknown fields, wrong types and unknown `@type`s fail
//! there, with the JSON pointer of the fault. Envoy's `validate.rules` (required fields, ranges,
//! lengths) are then checked on the decoded message. What is stored is the canonical form: the
//! decoded message serialised back, so equal configurations are equal bytes.

mod enum_case;
#[cfg(feature = "sqlx")]
mod kind_sql;
mod rules;
pub mod sensitive;

use std::fmt;
use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::json_pointer::{self, escape};

/// The descriptor set written by `build.rs`.
static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy.fds"));

/// Every Envoy message, extension and option the validator knows.
pub static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(DESCRIPTOR_SET).expect("the build's descriptor set decodes")
});

/// At most this many rule violations are reported for one resource.
const MAX_VIOLATIONS: usize = 50;

/// The kinds of resource the store keeps: the five Envoy xDS kinds, and proxy groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    Cluster,
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    Endpoints,
    /// `envoy.config.listener.v3.Listener` (LDS).
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    Route,
    /// `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS).
    Secret,
    /// A proxy group (FR-CL-001/002): which proxies belong, its parent, the resources it attaches.
    Group,
    /// A resource template (FR-EP-004): resources declared from it are rendered from it.
    Template,
}

impl ResourceKind {
    /// Every kind: the Envoy kinds in the order Envoy should receive them (make before break),
    /// then groups and templates.
    pub const ALL: [ResourceKind; 7] = [
        ResourceKind::Cluster,
        ResourceKind::Endpoints,
        ResourceKind::Secret,
        ResourceKind::Listener,
        ResourceKind::Route,
        ResourceKind::Group,
        ResourceKind::Template,
    ];

    /// The fully qualified protobuf message name; `None` for groups and templates, which are ours,
    /// not Envoy's.
    pub fn message_name(self) -> Option<&'static str> {
        match self {
            ResourceKind::Cluster => Some("envoy.config.cluster.v3.Cluster"),
            ResourceKind::Endpoints => Some("envoy.config.endpoint.v3.ClusterLoadAssignment"),
            ResourceKind::Listener => Some("envoy.config.listener.v3.Listener"),
            ResourceKind::Route => Some("envoy.config.route.v3.RouteConfiguration"),
            ResourceKind::Secret => Some("envoy.extensions.transport_sockets.tls.v3.Secret"),
            ResourceKind::Group | ResourceKind::Template => None,
        }
    }

    /// The xDS type URL of an Envoy kind.
    pub fn type_url(self) -> Option<String> {
        self.message_name()
            .map(|name| format!("type.googleapis.com/{name}"))
    }

    /// The field that holds the resource's name.
    pub fn name_field(self) -> &'static str {
        match self {
            ResourceKind::Endpoints => "cluster_name",
            _ => "name",
        }
    }

    /// The path segment of the kind in the REST API (`clusters`, `endpoints`, ...).
    pub fn collection(self) -> &'static str {
        match self {
            ResourceKind::Cluster => "clusters",
            ResourceKind::Endpoints => "endpoints",
            ResourceKind::Listener => "listeners",
            ResourceKind::Route => "routes",
            ResourceKind::Secret => "secrets",
            ResourceKind::Group => "groups",
            ResourceKind::Template => "templates",
        }
    }

    /// The kind a REST collection name stands for.
    pub fn from_collection(collection: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.collection() == collection)
    }

    fn descriptor(self) -> Option<MessageDescriptor> {
        let name = self.message_name()?;
        Some(
            POOL.get_message_by_name(name)
                .expect("the schema has every Envoy resource kind"),
        )
    }
}

impl ResourceKind {
    /// The kind's name, as stored and as the API spells it in bodies (`cluster`, `endpoints`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Cluster => "cluster",
            ResourceKind::Endpoints => "endpoints",
            ResourceKind::Listener => "listener",
            ResourceKind::Route => "route",
            ResourceKind::Secret => "secret",
            ResourceKind::Group => "group",
            ResourceKind::Template => "template",
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a resource kind's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a resource kind")]
pub struct UnknownKind(pub String);

impl std::str::FromStr for ResourceKind {
    type Err = UnknownKind;

    fn from_str(name: &str) -> Result<Self, UnknownKind> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| UnknownKind(name.to_owned()))
    }
}

/// One reason a resource is not valid, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON pointer (RFC 6901) into the submitted resource.
    pub pointer: String,
    /// What is wrong there.
    pub message: String,
}

/// A resource that passed validation.
#[derive(Clone, PartialEq)]
pub struct ValidResource {
    /// Its kind.
    pub kind: ResourceKind,
    /// Its name (the kind's name field).
    pub name: String,
    /// The canonical JSON: decoded and serialised back with proto field names, defaults omitted.
    pub canonical: Value,
    /// The decoded message, for reference extraction and encoding.
    pub message: DynamicMessage,
}

impl fmt::Debug for ValidResource {
    // A dynamic message's Debug walks its whole descriptor pool: show the JSON instead.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidResource")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("canonical", &self.canonical)
            .finish_non_exhaustive()
    }
}

/// Validates `json` as a resource of `kind` and returns its canonical form.
pub fn validate(kind: ResourceKind, json: &Value) -> Result<ValidResource, Vec<Violation>> {
    if let Some(pointer) = find_nul(json, &mut String::new()) {
        return Err(vec![Violation {
            pointer,
            message: "text may not contain NUL (U+0000)".to_owned(),
        }]);
    }
    let Some(descriptor) = kind.descriptor() else {
        return Err(vec![Violation {
            pointer: String::new(),
            message: format!("a {kind} is not an Envoy resource"),
        }]);
    };
    let json = enum_case::exact_enum_names(&descriptor, json);
    let message = decode(descriptor, &json)?;
    let mut violations = Vec::new();
    rules::check(&message, &mut String::new(), &mut violations);
    let name = message
        .get_field_by_name(kind.name_field())
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default();
    if let Err(problem) = check_name(&name) {
        violations.insert(
            0,
            Violation {
                pointer: format!("/{}", kind.name_field()),
                message: problem,
            },
        );
    }
    if !violations.is_empty() {
        violations.truncate(MAX_VIOLATIONS);
        return Err(violations);
    }
    let canonical = canonical_json(&message);
    Ok(ValidResource {
        kind,
        name,
        canonical,
        message,
    })
}

/// The pointer of the first string or key that contains a NUL character, which JSONB cannot hold.
fn find_nul(value: &Value, pointer: &mut String) -> Option<String> {
    match value {
        Value::String(text) if text.contains('\0') => Some(pointer.clone()),
        Value::Object(map) => map.iter().find_map(|(key, inner)| {
            let length = pointer.len();
            pointer.push('/');
            pointer.push_str(&escape(key));
            let found = if key.contains('\0') {
                Some(pointer.clone())
            } else {
                find_nul(inner, pointer)
            };
            pointer.truncate(length);
            found
        }),
        Value::Array(items) => items.iter().enumerate().find_map(|(index, inner)| {
            let length = pointer.len();
            pointer.push('/');
            pointer.push_str(&index.to_string());
            let found = find_nul(inner, pointer);
            pointer.truncate(length);
            found
        }),
        _ => None,
    }
}

/// Checks a resource name: it addresses the resource in URLs and in xDS.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a name is required".to_owned());
    }
    if name.chars().count() > 253 {
        return Err("a name has at most 253 characters".to_owned());
    }
    if name.chars().any(|c| c.is_control() || c == '/') {
        return Err("a name may not contain control characters or `/`".to_owned());
    }
    Ok(())
}

fn decode(desc: MessageDescriptor, json: &Value) -> Result<DynamicMessage, Vec<Violation>> {
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(json, &mut track);
    DynamicMessage::deserialize(desc, deserializer).map_err(|error| {
        let message = error.to_string();
        let pointer = json_pointer::of_error(&track.path(), &message);
        let message = message.replace("unrecognized field name", "unknown field");
        vec![Violation { pointer, message }]
    })
}

/// The protobuf encoding of a stored resource (its canonical JSON), as Envoy receives it over xDS.
pub fn encode(kind: ResourceKind, document: &Value) -> Result<Vec<u8>, String> {
    let descriptor = kind
        .descriptor()
        .ok_or_else(|| format!("a {kind} is not an Envoy resource"))?;
    let message =
        DynamicMessage::deserialize(descriptor, document).map_err(|error| error.to_string())?;
    Ok(prost::Message::encode_to_vec(&message))
}

/// The canonical JSON of a message: proto field names, default values omitted.
pub fn canonical_json(message: &DynamicMessage) -> Value {
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("a decoded message serialises")
}

#[cfg(test)]
mod envoy_code_tests;
#[cfg(test)]
mod tests;
