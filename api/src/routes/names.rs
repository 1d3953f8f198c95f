//! Names as paths and queries give them, checked before anything is looked up: a name no resource
//! can have is answered at once, without a database read or a cache entry, and a name prefix or
//! cursor longer than any name is refused.

use efms_domain::envoy::{check_name, ResourceKind};

use crate::error::{ApiError, FieldError};

/// The most characters of a resource name (`efms_domain::envoy::check_name`), and so of a name
/// prefix or a cursor that can match one.
pub const MAX_NAME_CHARS: usize = 253;

/// 404 for a `name` no resource can have (the name is not repeated: it may be huge).
pub fn check_lookup(kind: ResourceKind, name: &str) -> Result<(), ApiError> {
    check_name(name)
        .map_err(|reason| ApiError::NotFound(format!("there is no {kind} by that name: {reason}")))
}

/// 422 for a `name_prefix` or `cursor` query parameter longer than a name.
pub fn check_list_parameters(
    name_prefix: Option<&str>,
    cursor: Option<&str>,
) -> Result<(), ApiError> {
    let errors: Vec<FieldError> = [("name_prefix", name_prefix), ("cursor", cursor)]
        .into_iter()
        .filter(|(_, value)| value.is_some_and(|text| text.chars().count() > MAX_NAME_CHARS))
        .map(|(parameter, _)| {
            FieldError::parameter(
                parameter,
                format!("at most {MAX_NAME_CHARS} characters, the most a name has"),
            )
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}
