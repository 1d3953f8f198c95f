//! Limits on what a commit writes: the size of a stored document, the operations of a JSON Patch,
//! and the size of a resource rendered from a template.
//!
//! A patch or a template can describe far more than it weighs (each JSON Patch `copy` can double a
//! document), so the limits are checked while the result is being built, before a step that would
//! pass one is taken: a refused patch or render never materialises its oversized result. Sizes are
//! those of the compact JSON text.

use std::io;

use json_patch::PatchOperation;
use serde_json::Value;

use super::shared::Shared;

/// One mebibyte, the default size limits.
const MIB: usize = 1024 * 1024;

/// The limits a commit's documents are held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest document (compact JSON bytes) a write may store.
    pub max_document_bytes: usize,
    /// The most operations one JSON Patch may carry.
    pub max_patch_operations: usize,
    /// The largest resource (compact JSON bytes) a template may render.
    pub max_rendered_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_document_bytes: MIB,
            max_patch_operations: 1_000,
            max_rendered_bytes: MIB,
        }
    }
}

/// What a commit is decided with besides the repository itself: what other tenants share with the
/// tenant, and the limits its documents are held to (the aggregate's services).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommitContext {
    /// What other tenants share with this one.
    pub shared: Shared,
    /// The limits on what the commit writes.
    pub limits: Limits,
    /// The tenant's quota of resources of each kind, if it has one.
    pub resources_per_kind: Option<u32>,
}

impl From<Shared> for CommitContext {
    fn from(shared: Shared) -> Self {
        Self {
            shared,
            limits: Limits::default(),
            resources_per_kind: None,
        }
    }
}

/// Why a patch was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchRefusal {
    /// The patch has more operations than [`Limits::max_patch_operations`].
    #[error("the patch has {count} operations; at most {limit} are accepted")]
    TooManyOperations {
        /// Operations in the patch.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Applying `operation` (its index; `None` for a merge patch) would make the document larger
    /// than [`Limits::max_document_bytes`].
    #[error("the patched document would be larger than the limit of {limit} bytes")]
    TooLarge {
        /// The operation that would pass the limit.
        operation: Option<usize>,
        /// The limit.
        limit: usize,
    },
    /// Operation `operation` does not apply to the document.
    #[error("the patch does not apply: operation {operation} failed at path '{path}': {reason}")]
    DoesNotApply {
        /// Its index in the patch.
        operation: usize,
        /// Where it failed.
        path: String,
        /// Why.
        reason: String,
    },
}

impl PatchRefusal {
    /// The index of the operation at fault, if one is.
    pub fn operation(&self) -> Option<usize> {
        match self {
            PatchRefusal::TooManyOperations { .. } => None,
            PatchRefusal::TooLarge { operation, .. } => *operation,
            PatchRefusal::DoesNotApply { operation, .. } => Some(*operation),
        }
    }
}

/// The size of `value` as compact JSON text, counted without writing it anywhere.
pub fn json_size(value: &Value) -> usize {
    let mut counter = ByteCounter(0);
    serde_json::to_writer(&mut counter, value).expect("counting bytes cannot fail");
    counter.0
}

/// Counts what is written to it.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether `document` is within [`Limits::max_document_bytes`].
pub fn check_document(document: &Value, limits: &Limits) -> Result<(), PatchRefusal> {
    if json_size(document) > limits.max_document_bytes {
        return Err(PatchRefusal::TooLarge {
            operation: None,
            limit: limits.max_document_bytes,
        });
    }
    Ok(())
}

/// Applies an RFC 6902 JSON Patch to `document` within `limits`.
///
/// Before each operation, the size it can add is worked out from the value it would write (an
/// `add` or `replace` value, the source of a `copy`); an operation that would take the document
/// past [`Limits::max_document_bytes`] is refused before it is applied. On an error the document is
/// left part-patched: the caller drops it.
pub fn apply_patch(
    document: &mut Value,
    patch: &[PatchOperation],
    limits: &Limits,
) -> Result<(), PatchRefusal> {
    if patch.len() > limits.max_patch_operations {
        return Err(PatchRefusal::TooManyOperations {
            count: patch.len(),
            limit: limits.max_patch_operations,
        });
    }
    let limit = limits.max_document_bytes;
    // An upper bound of the document's size; exact again whenever it would pass the limit.
    let mut size = json_size(document);
    for (index, operation) in patch.iter().enumerate() {
        let (added, removed) = size_change(document, operation);
        if size.saturating_sub(removed) + added > limit {
            size = json_size(document);
            if size.saturating_sub(removed) + added > limit {
                return Err(PatchRefusal::TooLarge {
                    operation: Some(index),
                    limit,
                });
            }
        }
        json_patch::patch(document, std::slice::from_ref(operation)).map_err(|error| {
            PatchRefusal::DoesNotApply {
                operation: index,
                path: error.path.to_string(),
                reason: error.kind.to_string(),
            }
        })?;
        size = size.saturating_sub(removed) + added;
    }
    Ok(())
}

/// Applies an RFC 7396 merge patch to `document` within `limits`. A merge patch writes nothing it
/// does not carry, so its result is at most the document and the patch together; that is checked
/// first, and the result only when it could pass the limit.
pub fn apply_merge_patch(
    document: &mut Value,
    patch: &Value,
    limits: &Limits,
) -> Result<(), PatchRefusal> {
    let bound = json_size(document) + json_size(patch);
    json_patch::merge(document, patch);
    if bound > limits.max_document_bytes {
        check_document(document, limits)?;
    }
    Ok(())
}

/// How many bytes `operation` can add to `document` (an upper bound), and how many it surely
/// removes.
fn size_change(document: &Value, operation: &PatchOperation) -> (usize, usize) {
    let at = |pointer: &str| document.pointer(pointer).map_or(0, json_size);
    // A new object member or array element brings its key, quotes, colon and comma.
    let framing = |path: &json_patch::jsonptr::Pointer| {
        path.last().map_or(0, |token| token.encoded().len() + 4)
    };
    match operation {
        PatchOperation::Add(add) => {
            // An `add` to an existing object member replaces it.
            let replaced = add
                .path
                .split_back()
                .and_then(|(parent, last)| {
                    document
                        .pointer(parent.as_str())?
                        .as_object()?
                        .get(last.decoded().as_ref())
                })
                .map_or(0, json_size);
            (json_size(&add.value) + framing(&add.path), replaced)
        }
        PatchOperation::Replace(replace) => (json_size(&replace.value), at(replace.path.as_str())),
        PatchOperation::Copy(copy) => (at(copy.from.as_str()) + framing(&copy.path), 0),
        PatchOperation::Move(moved) => (framing(&moved.path), 0),
        PatchOperation::Remove(remove) => (0, at(remove.path.as_str())),
        PatchOperation::Test(_) => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn patch(operations: &Value) -> Vec<PatchOperation> {
        serde_json::from_value::<json_patch::Patch>(operations.clone())
            .unwrap()
            .0
    }

    fn small() -> Limits {
        Limits {
            max_document_bytes: 4_096,
            max_patch_operations: 50,
            max_rendered_bytes: 4_096,
        }
    }

    #[test]
    fn the_size_is_that_of_compact_json() {
        let value = json!({ "a": [1, "x\"y"], "b": null });
        assert_eq!(json_size(&value), value.to_string().len());
    }

    #[test]
    fn doubling_copies_are_refused_at_the_copy_that_would_pass_the_limit() {
        let mut document = json!({ "name": "c", "a": "x".repeat(300) });
        // Each copy doubles the document: 300, 600, 1200, 2400 bytes of `x`, then 4800.
        let operations: Vec<Value> = (0..30)
            .map(|i| json!({ "op": "copy", "from": "", "path": format!("/d{i}") }))
            .collect();
        let refused = apply_patch(&mut document, &patch(&json!(operations)), &small());
        let Err(PatchRefusal::TooLarge { operation, limit }) = refused else {
            panic!("{refused:?}");
        };
        assert_eq!(limit, 4_096);
        assert!(operation.is_some_and(|index| index < 5), "{operation:?}");
        assert!(json_size(&document) <= 4_096);
    }

    #[test]
    fn too_many_operations_are_refused_before_any_is_applied() {
        let mut document = json!({ "n": 0 });
        let operations: Vec<Value> = (0..51)
            .map(|i| json!({ "op": "replace", "path": "/n", "value": i }))
            .collect();
        assert_eq!(
            apply_patch(&mut document, &patch(&json!(operations)), &small()),
            Err(PatchRefusal::TooManyOperations {
                count: 51,
                limit: 50
            })
        );
        assert_eq!(document, json!({ "n": 0 }));
    }

    #[test]
    fn replacing_and_removing_large_values_stays_within_the_limit() {
        let big = "y".repeat(3_000);
        let mut document = json!({ "a": big });
        let operations: Vec<Value> = (0..20)
            .flat_map(|_| {
                [
                    json!({ "op": "replace", "path": "/a", "value": big }),
                    json!({ "op": "add", "path": "/a", "value": big }),
                    json!({ "op": "remove", "path": "/a" }),
                    json!({ "op": "add", "path": "/a", "value": big }),
                ]
            })
            .take(50)
            .collect();
        apply_patch(&mut document, &patch(&json!(operations)), &small()).unwrap();
        assert!(json_size(&document) <= 4_096);
    }

    #[test]
    fn an_operation_that_does_not_apply_is_named_by_its_index() {
        let mut document = json!({ "a": 1 });
        let operations = json!([
            { "op": "replace", "path": "/a", "value": 2 },
            { "op": "remove", "path": "/missing" }
        ]);
        let refused = apply_patch(&mut document, &patch(&operations), &small()).unwrap_err();
        assert_eq!(refused.operation(), Some(1));
    }

    #[test]
    fn a_merge_patch_past_the_limit_is_refused() {
        let mut document = json!({ "a": "x".repeat(3_000) });
        let merge = json!({ "b": "x".repeat(3_000) });
        assert!(matches!(
            apply_merge_patch(&mut document, &merge, &small()),
            Err(PatchRefusal::TooLarge {
                operation: None,
                ..
            })
        ));
    }
}
