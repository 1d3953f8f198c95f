//! JSON pointers (RFC 6901) that name where a request body went wrong.

use serde_path_to_error::{Path, Segment};

/// Escapes one reference token of a JSON pointer.
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The pointer of a path that `serde_path_to_error` tracked.
pub fn of_path(path: &Path) -> String {
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Seq { index } => Some(format!("/{index}")),
            Segment::Map { key } => Some(format!("/{}", escape(key))),
            Segment::Enum { variant } => Some(format!("/{}", escape(variant))),
            Segment::Unknown => None,
        })
        .collect()
}

/// The pointer of a deserialisation error at `path`. Some errors are reported at the parent
/// object and name the field only in their message (serde's missing field, prost-reflect's
/// unknown field); the pointer then goes on to that field.
pub fn of_error(path: &Path, message: &str) -> String {
    let mut pointer = of_path(path);
    let field = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
        .or_else(|| {
            message
                .strip_prefix("unrecognized field name '")
                .and_then(|rest| rest.split('\'').next())
        });
    if let Some(field) = field {
        pointer.push('/');
        pointer.push_str(&escape(field));
    }
    pointer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_escaped() {
        assert_eq!(escape("a/b~c"), "a~1b~0c");
    }

    #[test]
    fn fields_named_only_in_the_message_extend_the_pointer() {
        let path = serde_path_to_error::Track::new().path();
        assert_eq!(of_error(&path, "missing field `name`"), "/name");
        assert_eq!(
            of_error(&path, "unrecognized field name 'adress'"),
            "/adress"
        );
        assert_eq!(of_error(&path, "invalid type: string, expected u32"), "");
    }
}
