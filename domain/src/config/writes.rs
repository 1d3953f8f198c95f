//! What a write asks for, before the aggregate decides it: a create or replace body as a change
//! (the resource itself, or a declaration from a template), and a patch applied to a stored
//! document within the limits on what a commit writes.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::limits::{self, Limits, PatchRefusal};
use super::template::Derivation;
use super::{Change, Expect};
use crate::envoy::{self, ResourceKind, Violation};

/// The key of a body that declares a resource from a template instead of giving it.
pub const TEMPLATE_KEY: &str = "$template";

/// A declaration from a template, as a body gives it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateUse {
    template: String,
    /// The resource's name (on create; a replace takes it from the path).
    name: Option<String>,
    #[serde(default)]
    parameters: BTreeMap<String, Value>,
    overrides: Option<Value>,
}

/// The change a create or replace body asks for: the resource itself, or
/// `{"$template": {"template", "name"?, "parameters"?, "overrides"?}}` to declare it from a
/// template (rendered and validated by the commit). `path_name` is the name the request's path
/// gives, if it gives one. What is wrong is named by pointers into the body.
pub fn change_of(
    kind: ResourceKind,
    body: &Value,
    expect: Expect,
    path_name: Option<&str>,
) -> Result<Change, Vec<Violation>> {
    let Some(declaration) = body
        .as_object()
        .filter(|object| object.len() == 1)
        .and_then(|object| object.get(TEMPLATE_KEY))
    else {
        return Change::put(kind, body, expect);
    };
    let at = |pointer: &str, message: String| {
        vec![Violation {
            pointer: format!("/{TEMPLATE_KEY}{pointer}"),
            message,
        }]
    };
    let declared: TemplateUse = serde_json::from_value(declaration.clone())
        .map_err(|error| at("", format!("not a template declaration: {error}")))?;
    if kind.message_name().is_none() {
        return Err(at(
            "",
            format!("only Envoy resources are declared from templates, not {kind}s"),
        ));
    }
    let name = match (path_name, declared.name) {
        (Some(path), Some(given)) if path != given => {
            return Err(at(
                "/name",
                format!("the body names `{given}`, the path `{path}`"),
            ))
        }
        (Some(path), _) => path.to_owned(),
        (None, Some(given)) => given,
        (None, None) => return Err(at("/name", "a declaration needs a `name`".to_owned())),
    };
    envoy::check_name(&name).map_err(|detail| at("/name", detail))?;
    Ok(Change::Derive {
        kind,
        name,
        derivation: Derivation {
            template: declared.template,
            parameters: declared.parameters,
            overrides: declared.overrides,
        },
        expect,
    })
}

/// A patch of a stored document.
#[derive(Debug, Clone, PartialEq)]
pub enum Patch {
    /// An RFC 6902 JSON Patch.
    Json(json_patch::Patch),
    /// An RFC 7396 merge patch.
    Merge(Value),
}

impl Patch {
    /// Applies the patch to `document` within `limits` (checked while it is applied: a refused
    /// patch never builds its oversized result). On a refusal the document is part-patched: the
    /// caller drops it.
    pub fn apply(&self, document: &mut Value, limits: &Limits) -> Result<(), PatchRefusal> {
        match self {
            Patch::Json(patch) => limits::apply_patch(document, &patch.0, limits),
            Patch::Merge(patch) => limits::apply_merge_patch(document, patch, limits),
        }
    }
}

/// Where a refused patch given at pointer `at` is at fault: the operation's index under `at`, or
/// the patch as a whole.
pub fn refusal_pointer(refusal: &PatchRefusal, at: &str) -> String {
    match refusal.operation() {
        Some(index) => format!("{at}/{index}"),
        None => at.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_declaration_takes_its_name_from_the_path_and_refuses_another() {
        let body = json!({ TEMPLATE_KEY: { "template": "t", "name": "a" } });
        let refused = change_of(ResourceKind::Cluster, &body, Expect::Anything, Some("b"));
        assert_eq!(refused.unwrap_err()[0].pointer, "/$template/name");
        let body = json!({ TEMPLATE_KEY: { "template": "t" } });
        let change = change_of(ResourceKind::Cluster, &body, Expect::Anything, Some("b")).unwrap();
        assert_eq!(change.key(), (ResourceKind::Cluster, "b"));
    }

    #[test]
    fn only_envoy_resources_are_declared_from_templates() {
        let body = json!({ TEMPLATE_KEY: { "template": "t", "name": "g" } });
        let refused = change_of(ResourceKind::Group, &body, Expect::Absent, None).unwrap_err();
        assert_eq!(refused[0].pointer, "/$template");
    }

    #[test]
    fn a_refused_patch_operation_is_named_under_the_patch() {
        let patch: json_patch::Patch =
            serde_json::from_value(json!([{ "op": "remove", "path": "/missing" }])).unwrap();
        let mut document = json!({ "name": "a" });
        let refusal = Patch::Json(patch)
            .apply(&mut document, &Limits::default())
            .unwrap_err();
        assert_eq!(refusal_pointer(&refusal, "/patch"), "/patch/0");
    }
}
