//! Templates (FR-EP-004): a resource skeleton with parameters, and resources declared from one.
//!
//! A template names the Envoy kind it makes, its parameters (each with an optional default) and a
//! body. In the body, a string that is exactly `{{param}}` becomes the parameter's value, whatever
//! its JSON type; `{{param}}` inside a longer string becomes its text (strings, numbers and booleans
//! only). `{{name}}` is always the declared resource's name. A declaration names the template,
//! gives parameter values and may add overrides, an RFC 7396 merge patch applied after rendering.
//! Secrets are not templated, so that no private material travels in a declaration. The rendered
//! resource is validated like any other; the store re-renders every resource declared
//! from a template when the template changes, in the same commit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::limits;
use crate::envoy::{check_name, ResourceKind, Violation};
use crate::json_pointer;

/// The parameter every template has: the declared resource's name.
pub const NAME_PARAMETER: &str = "name";

/// A template as written and stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// Its name.
    pub name: String,
    /// The Envoy kind it makes.
    pub kind: ResourceKind,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its parameters, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, Parameter>,
    /// The resource skeleton, with `{{param}}` placeholders.
    pub body: Value,
}

/// A template parameter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    /// The value when a declaration gives none; without one, the parameter is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// What it means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// How a resource is declared from a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Derivation {
    /// The template.
    pub template: String,
    /// Parameter values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, Value>,
    /// An RFC 7396 merge patch applied to the rendered resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<Value>,
}

/// Validates a template's JSON and returns its name and canonical form.
pub fn validate(json: &Value) -> Result<(String, Value, TemplateSpec), Vec<Violation>> {
    let mut track = serde_path_to_error::Track::new();
    let spec = TemplateSpec::deserialize(serde_path_to_error::Deserializer::new(json, &mut track))
        .map_err(|error| {
            let message = error.to_string();
            vec![Violation {
                pointer: json_pointer::of_error(&track.path(), &message),
                message,
            }]
        })?;
    let mut violations = Vec::new();
    let mut fault =
        |pointer: String, message: String| violations.push(Violation { pointer, message });
    if let Err(message) = check_name(&spec.name) {
        fault("/name".to_owned(), message);
    }
    if spec.kind.message_name().is_none() || spec.kind == ResourceKind::Secret {
        // Secrets are not templated: their private material would travel in declarations.
        fault(
            "/kind".to_owned(),
            "a template makes a cluster, endpoints, listener or route".to_owned(),
        );
    }
    for name in spec.parameters.keys() {
        if name == NAME_PARAMETER || !is_identifier(name) {
            fault(
                format!("/parameters/{}", escape(name)),
                format!(
                    "`{name}` cannot name a parameter: use a-z, 0-9 and `_`, starting with a letter; `name` is given"
                ),
            );
        }
    }
    if !spec.body.is_object() {
        fault("/body".to_owned(), "the body is a JSON object".to_owned());
    }
    let mut used = Vec::new();
    placeholders(&spec.body, "/body", &mut used);
    for (pointer, parameter) in used {
        if parameter != NAME_PARAMETER && !spec.parameters.contains_key(&parameter) {
            fault(
                pointer,
                format!("`{{{{{parameter}}}}}` names no parameter of the template"),
            );
        }
    }
    if json.to_string().contains("\\u0000") {
        fault(
            String::new(),
            "text may not contain NUL (U+0000)".to_owned(),
        );
    }
    if !violations.is_empty() {
        return Err(violations);
    }
    let canonical = serde_json::to_value(&spec).expect("a template serialises");
    Ok((spec.name.clone(), canonical, spec))
}

/// Renders the resource `name` declared by `derivation` from `spec`: the Envoy JSON to validate.
/// Violations point into the declaration (`/parameters/…`) or the rendered body.
///
/// Rendering stops as soon as the output would pass `max_bytes` (compact JSON): a template can
/// repeat a large parameter value many times, so its output is bounded while it is built, not
/// measured afterwards.
pub fn render(
    spec: &TemplateSpec,
    name: &str,
    derivation: &Derivation,
    max_bytes: usize,
) -> Result<Value, Vec<Violation>> {
    let mut violations = Vec::new();
    for given in derivation.parameters.keys() {
        if !spec.parameters.contains_key(given) {
            violations.push(Violation {
                pointer: format!("/parameters/{}", escape(given)),
                message: format!("template `{}` has no parameter `{given}`", spec.name),
            });
        }
    }
    let mut values: BTreeMap<&str, &Value> = BTreeMap::new();
    for (parameter, declared) in &spec.parameters {
        match derivation
            .parameters
            .get(parameter)
            .or(declared.default.as_ref())
        {
            Some(value) => {
                values.insert(parameter, value);
            }
            None => violations.push(Violation {
                pointer: format!("/parameters/{}", escape(parameter)),
                message: format!("template `{}` needs a value for `{parameter}`", spec.name),
            }),
        }
    }
    let name_value = Value::String(name.to_owned());
    values.insert(NAME_PARAMETER, &name_value);
    if !violations.is_empty() {
        return Err(violations);
    }
    let too_large = || {
        vec![Violation {
            pointer: String::new(),
            message: format!(
                "template `{}` renders more than {max_bytes} bytes, the limit on a rendered resource",
                spec.name
            ),
        }]
    };
    let mut budget = Budget { left: max_bytes };
    let mut rendered = substitute(&spec.body, "", &values, &mut budget, &mut violations)
        .map_err(|Exhausted| too_large())?;
    if !violations.is_empty() {
        return Err(violations);
    }
    if let Some(overrides) = &derivation.overrides {
        json_patch::merge(&mut rendered, overrides);
        if limits::json_size(&rendered) > max_bytes {
            return Err(too_large());
        }
    }
    if let Some(object) = rendered.as_object_mut() {
        object.insert(spec.kind.name_field().to_owned(), name_value);
    }
    Ok(rendered)
}

/// The bytes a render may still produce.
struct Budget {
    left: usize,
}

/// The render would pass its limit.
struct Exhausted;

impl Budget {
    fn spend(&mut self, bytes: usize) -> Result<(), Exhausted> {
        self.left = self.left.checked_sub(bytes).ok_or(Exhausted)?;
        Ok(())
    }
}

/// `value` with its placeholders filled, spending `budget` on every byte it produces (before
/// producing it).
fn substitute(
    value: &Value,
    pointer: &str,
    values: &BTreeMap<&str, &Value>,
    budget: &mut Budget,
    violations: &mut Vec<Violation>,
) -> Result<Value, Exhausted> {
    match value {
        Value::String(text) => {
            if let Some(whole) = whole_placeholder(text) {
                if let Some(value) = values.get(whole) {
                    budget.spend(limits::json_size(value))?;
                    return Ok((*value).clone());
                }
            }
            // The quotes.
            budget.spend(2)?;
            let mut out = String::new();
            let mut push = |out: &mut String, piece: &str| -> Result<(), Exhausted> {
                budget.spend(piece.len())?;
                out.push_str(piece);
                Ok(())
            };
            let mut rest = text.as_str();
            while let Some(start) = rest.find("{{") {
                let Some(end) = rest[start..].find("}}") else {
                    break;
                };
                let parameter = rest[start + 2..start + end].trim();
                push(&mut out, &rest[..start])?;
                match values.get(parameter) {
                    Some(Value::String(s)) => push(&mut out, s)?,
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => push(&mut out, &v.to_string())?,
                    Some(_) => violations.push(Violation {
                        pointer: pointer.to_owned(),
                        message: format!(
                            "`{parameter}` is an object, array or null: it can only fill a whole value"
                        ),
                    }),
                    None => push(&mut out, &rest[start..start + end + 2])?,
                }
                rest = &rest[start + end + 2..];
            }
            push(&mut out, rest)?;
            Ok(Value::String(out))
        }
        Value::Array(items) => {
            budget.spend(2)?;
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                budget.spend(1)?;
                out.push(substitute(
                    item,
                    &format!("{pointer}/{i}"),
                    values,
                    budget,
                    violations,
                )?);
            }
            Ok(Value::Array(out))
        }
        Value::Object(map) => {
            budget.spend(2)?;
            let mut out = serde_json::Map::new();
            for (key, item) in map {
                // The key, its quotes, the colon and a comma.
                budget.spend(key.len() + 4)?;
                let at = format!("{pointer}/{}", escape(key));
                out.insert(
                    key.clone(),
                    substitute(item, &at, values, budget, violations)?,
                );
            }
            Ok(Value::Object(out))
        }
        other => {
            budget.spend(limits::json_size(other))?;
            Ok(other.clone())
        }
    }
}

/// `p` when `text` is exactly `{{p}}` (spaces allowed inside the braces).
fn whole_placeholder(text: &str) -> Option<&str> {
    let inner = text.strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}")).then(|| inner.trim())
}

/// Every `{{p}}` in `value`, with where it is.
fn placeholders(value: &Value, pointer: &str, found: &mut Vec<(String, String)>) {
    match value {
        Value::String(text) => {
            let mut rest = text.as_str();
            while let Some(start) = rest.find("{{") {
                let Some(end) = rest[start..].find("}}") else {
                    break;
                };
                found.push((
                    pointer.to_owned(),
                    rest[start + 2..start + end].trim().to_owned(),
                ));
                rest = &rest[start + end + 2..];
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                placeholders(item, &format!("{pointer}/{i}"), found);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                placeholders(item, &format!("{pointer}/{}", escape(key)), found);
            }
        }
        _ => {}
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn web_template() -> TemplateSpec {
        validate(&json!({
            "name": "web",
            "kind": "cluster",
            "parameters": { "port": {}, "timeout": { "default": "1s" } },
            "body": {
                "name": "{{name}}", "type": "STATIC", "connect_timeout": "{{timeout}}",
                "load_assignment": { "cluster_name": "{{name}}", "endpoints": [{ "lb_endpoints": [{
                    "endpoint": { "address": { "socket_address": {
                        "address": "10.0.0.1", "port_value": "{{port}}" } } } }] }] },
                "alt_stat_name": "web-{{name}}-{{port}}"
            }
        }))
        .unwrap()
        .2
    }

    const LIMIT: usize = 1024 * 1024;

    fn declare(parameters: Value, overrides: Option<Value>) -> Derivation {
        Derivation {
            template: "web".into(),
            parameters: serde_json::from_value(parameters).unwrap(),
            overrides,
        }
    }

    #[test]
    fn placeholders_take_whole_values_or_text_and_defaults_fill_the_rest() {
        let rendered = render(
            &web_template(),
            "svc-a",
            &declare(json!({ "port": 8080 }), None),
            LIMIT,
        )
        .unwrap();
        assert_eq!(rendered["name"], "svc-a");
        assert_eq!(rendered["connect_timeout"], "1s");
        assert_eq!(
            rendered["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"],
            8080
        );
        assert_eq!(rendered["alt_stat_name"], "web-svc-a-8080");
    }

    #[test]
    fn overrides_are_merged_after_rendering_but_cannot_rename() {
        let rendered = render(
            &web_template(),
            "svc-a",
            &declare(
                json!({ "port": 1 }),
                Some(json!({ "connect_timeout": "3s", "alt_stat_name": null, "name": "other" })),
            ),
            LIMIT,
        )
        .unwrap();
        assert_eq!(rendered["connect_timeout"], "3s");
        assert!(rendered.get("alt_stat_name").is_none());
        assert_eq!(rendered["name"], "svc-a");
    }

    #[test]
    fn missing_and_unknown_parameters_are_named() {
        let violations = render(
            &web_template(),
            "x",
            &declare(json!({ "colour": "red" }), None),
            LIMIT,
        )
        .unwrap_err();
        let pointers: Vec<&str> = violations.iter().map(|v| v.pointer.as_str()).collect();
        assert_eq!(pointers, ["/parameters/colour", "/parameters/port"]);
    }

    #[test]
    fn a_template_may_only_use_parameters_it_declares_and_makes_envoy_kinds() {
        let pointers = |json: Value| -> Vec<String> {
            validate(&json)
                .unwrap_err()
                .into_iter()
                .map(|v| v.pointer)
                .collect()
        };
        assert_eq!(
            pointers(json!({ "name": "t", "kind": "cluster", "body": { "name": "{{nope}}" } })),
            ["/body/name"]
        );
        assert_eq!(
            pointers(json!({ "name": "t", "kind": "group", "body": {} })),
            ["/kind"]
        );
        assert_eq!(
            pointers(
                json!({ "name": "t", "kind": "cluster", "parameters": { "name": {} }, "body": {} })
            ),
            ["/parameters/name"]
        );
    }

    #[test]
    fn rendering_stops_at_the_limit_instead_of_building_the_whole_output() {
        // Ten thousand copies of a 1 MiB value: 10 GiB if it were built before being measured.
        let spec = validate(&json!({
            "name": "bomb",
            "kind": "cluster",
            "parameters": { "blob": {} },
            "body": { "name": "{{name}}", "metadata": { "filter_metadata": { "x": {
                "items": vec!["{{blob}}"; 10_000] } } } }
        }))
        .unwrap()
        .2;
        let blob = "b".repeat(1024 * 1024);
        let violations = render(
            &spec,
            "c",
            &declare(json!({ "blob": blob }), None),
            4 * 1024 * 1024,
        )
        .unwrap_err();
        assert_eq!(violations.len(), 1);
        assert!(
            violations[0]
                .message
                .contains("template `bomb` renders more than 4194304 bytes"),
            "{violations:?}"
        );
    }

    #[test]
    fn text_placeholders_count_towards_the_limit_too() {
        let spec = validate(&json!({
            "name": "long",
            "kind": "cluster",
            "parameters": { "word": {} },
            "body": { "name": "{{name}}", "alt_stat_name": "{{word}}-{{word}}-{{word}}" }
        }))
        .unwrap()
        .2;
        let declaration = declare(json!({ "word": "w".repeat(100) }), None);
        assert!(render(&spec, "c", &declaration, 200).is_err());
        assert!(render(&spec, "c", &declaration, 400).is_ok());
    }
}
