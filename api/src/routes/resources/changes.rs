//! What a create or replace body asks to change: the Envoy resource itself, or a declaration from
//! a template; and the change that restores a stored resource.

use std::collections::BTreeMap;

use efms_domain::config::template::Derivation;
use efms_domain::config::{Change, Expect};
use efms_domain::envoy::{ResourceKind, Violation};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ApiError, FieldError};

/// Schema violations as a 422.
pub fn invalid(violations: Vec<Violation>) -> ApiError {
    ApiError::Validation(
        violations
            .into_iter()
            .map(|violation| FieldError::at(violation.pointer, violation.message))
            .collect(),
    )
}

/// The name of the resource a change touches.
pub(super) fn change_name(change: &Change) -> String {
    change.key().1.to_owned()
}

/// The key of a body that declares a resource from a template instead of giving it.
pub const TEMPLATE_KEY: &str = "$template";

/// A declaration from a template, as a request body gives it.
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
/// template (rendered and validated by the commit).
pub fn change_of(
    kind: ResourceKind,
    body: &Value,
    expect: Expect,
    path_name: Option<&str>,
) -> Result<Change, ApiError> {
    let Some(declaration) = body
        .as_object()
        .filter(|object| object.len() == 1)
        .and_then(|object| object.get(TEMPLATE_KEY))
    else {
        return Change::put(kind, body, expect).map_err(invalid);
    };
    let at = |pointer: &str, detail: String| {
        ApiError::Validation(vec![FieldError::at(
            format!("/{TEMPLATE_KEY}{pointer}"),
            detail,
        )])
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
    efms_domain::envoy::check_name(&name).map_err(|detail| at("/name", detail))?;
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

/// The change that restores a stored resource: its document, or its template declaration.
pub fn restore(
    kind: ResourceKind,
    document: &Value,
    derivation: Option<&Value>,
    expect: Expect,
) -> Result<Change, ApiError> {
    efms_domain::config::plans::restore(kind, document, derivation, expect).map_err(invalid)
}

/// 422 when the body names another resource than the path.
pub(super) fn check_path_name(
    kind: ResourceKind,
    name: &str,
    change: &Change,
) -> Result<(), ApiError> {
    let body_name = change_name(change);
    if body_name == name {
        Ok(())
    } else {
        Err(ApiError::Validation(vec![FieldError::at(
            format!("/{}", kind.name_field()),
            format!("the body names `{body_name}`, the path `{name}`; renaming is a create and a delete"),
        )]))
    }
}
