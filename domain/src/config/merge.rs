//! Three-way merge of resource documents (FR-VC-005).
//!
//! Each resource is merged on its own: `base` is its document at the common ancestor (the fork
//! point, or the branch revision merged last time), `ours` the document on the branch merged into,
//! `theirs` the document on the branch being merged; `None` means the resource does not exist there.
//! A side that left a value as the base had it takes the other side's value; where both sides
//! changed the same value differently, that is a conflict at its JSON pointer.
//!
//! Objects merge key by key. Arrays whose elements are all objects with distinct string `name`s
//! (virtual hosts, routes, weighted clusters, filter chains, filters) merge element by element,
//! matched by name, not by index: ours' order is kept and an element only theirs added is placed
//! after the element that precedes it on their side. Any other array is one value.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value};

/// Both sides changed the same value differently.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// Where, in the merged document (an element of a named array is addressed by its index in
    /// ours when ours has it, else in theirs).
    pub pointer: String,
    /// The value at the common ancestor (`None`: absent).
    pub base: Option<Value>,
    /// The value on the branch merged into.
    pub ours: Option<Value>,
    /// The value on the branch being merged.
    pub theirs: Option<Value>,
}

/// Merges one resource's three versions: the merged document (`None`: the resource is absent), or
/// every conflict.
pub fn merge_document(
    base: Option<&Value>,
    ours: Option<&Value>,
    theirs: Option<&Value>,
) -> Result<Option<Value>, Vec<Conflict>> {
    let mut conflicts = Vec::new();
    let merged = merge_value(String::new(), base, ours, theirs, &mut conflicts);
    if conflicts.is_empty() {
        Ok(merged)
    } else {
        Err(conflicts)
    }
}

fn merge_value(
    pointer: String,
    base: Option<&Value>,
    ours: Option<&Value>,
    theirs: Option<&Value>,
    conflicts: &mut Vec<Conflict>,
) -> Option<Value> {
    if ours == theirs || base == theirs {
        return ours.cloned();
    }
    if base == ours {
        return theirs.cloned();
    }
    match (ours, theirs) {
        (Some(Value::Object(o)), Some(Value::Object(t))) => {
            let empty = Map::new();
            let b = match base {
                Some(Value::Object(b)) => b,
                _ => &empty,
            };
            let keys: BTreeSet<&String> = b.keys().chain(o.keys()).chain(t.keys()).collect();
            let mut merged = Map::new();
            for key in keys {
                let at = format!("{pointer}/{}", escape(key));
                if let Some(value) = merge_value(at, b.get(key), o.get(key), t.get(key), conflicts)
                {
                    merged.insert(key.clone(), value);
                }
            }
            Some(Value::Object(merged))
        }
        (Some(Value::Array(o)), Some(Value::Array(t)))
            if named(o)
                && named(t)
                && base.is_none_or(|b| b.as_array().is_some_and(|b| named(b))) =>
        {
            let b = base
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            Some(Value::Array(merge_named(&pointer, b, o, t, conflicts)))
        }
        _ => {
            conflicts.push(Conflict {
                pointer,
                base: base.cloned(),
                ours: ours.cloned(),
                theirs: theirs.cloned(),
            });
            ours.cloned()
        }
    }
}

/// Merges arrays of named objects by name.
fn merge_named(
    pointer: &str,
    base: &[Value],
    ours: &[Value],
    theirs: &[Value],
    conflicts: &mut Vec<Conflict>,
) -> Vec<Value> {
    let by_name = |items: &[Value]| -> HashMap<String, (usize, Value)> {
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| name_of(item).map(|n| (n.to_owned(), (i, item.clone()))))
            .collect()
    };
    let (b, t) = (by_name(base), by_name(theirs));
    // Ours' elements in ours' order, each merged with its namesakes.
    let mut merged: Vec<(String, Option<Value>)> = ours
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let name = name_of(item).unwrap_or_default().to_owned();
            let value = merge_value(
                format!("{pointer}/{i}"),
                b.get(&name).map(|(_, v)| v),
                Some(item),
                t.get(&name).map(|(_, v)| v),
                conflicts,
            );
            (name, value)
        })
        .collect();
    // Elements ours does not have: added by theirs, or deleted by ours.
    let mut previous: Option<String> = None;
    for item in theirs {
        let name = name_of(item).unwrap_or_default().to_owned();
        if !merged.iter().any(|(n, _)| *n == name) {
            let index = t.get(&name).map_or(0, |(i, _)| *i);
            let value = merge_value(
                format!("{pointer}/{index}"),
                b.get(&name).map(|(_, v)| v),
                None,
                Some(item),
                conflicts,
            );
            if value.is_some() {
                let at = previous
                    .as_ref()
                    .and_then(|p| merged.iter().position(|(n, _)| n == p))
                    .map_or(0, |i| i + 1);
                merged.insert(at, (name.clone(), value));
            }
        }
        previous = Some(name);
    }
    merged.into_iter().filter_map(|(_, value)| value).collect()
}

fn name_of(item: &Value) -> Option<&str> {
    item.get("name").and_then(Value::as_str)
}

/// Whether every element is an object with a string `name`, no two alike.
fn named(items: &[Value]) -> bool {
    let mut seen = BTreeSet::new();
    items
        .iter()
        .all(|item| item.is_object() && name_of(item).is_some_and(|n| seen.insert(n)))
}

/// A key as a JSON pointer segment (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn merge(base: &Value, ours: &Value, theirs: &Value) -> Result<Option<Value>, Vec<Conflict>> {
        merge_document(Some(base), Some(ours), Some(theirs))
    }

    #[test]
    fn changes_to_different_fields_both_land() {
        let base = json!({"name": "c", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN"});
        let ours = json!({"name": "c", "connect_timeout": "2s", "lb_policy": "ROUND_ROBIN"});
        let theirs = json!({"name": "c", "connect_timeout": "1s", "lb_policy": "LEAST_REQUEST"});
        assert_eq!(
            merge(&base, &ours, &theirs).unwrap(),
            Some(json!({"name": "c", "connect_timeout": "2s", "lb_policy": "LEAST_REQUEST"}))
        );
    }

    #[test]
    fn the_same_field_changed_differently_is_a_conflict_at_its_pointer() {
        let base = json!({"name": "c", "connect_timeout": "1s"});
        let ours = json!({"name": "c", "connect_timeout": "2s"});
        let theirs = json!({"name": "c", "connect_timeout": "3s"});
        let conflicts = merge(&base, &ours, &theirs).unwrap_err();
        assert_eq!(
            conflicts,
            vec![Conflict {
                pointer: "/connect_timeout".into(),
                base: Some(json!("1s")),
                ours: Some(json!("2s")),
                theirs: Some(json!("3s")),
            }]
        );
    }

    #[test]
    fn routes_added_on_both_sides_merge_by_name() {
        let vhost = |routes: Value| json!({"name": "r", "virtual_hosts": [{"name": "web", "domains": ["*"], "routes": routes}]});
        let a = json!({"name": "a", "match": {"prefix": "/a"}});
        let b = json!({"name": "b", "match": {"prefix": "/b"}});
        let c = json!({"name": "c", "match": {"prefix": "/c"}});
        let base = vhost(json!([a]));
        let ours = vhost(json!([a, b]));
        let theirs = vhost(json!([a, c]));
        let merged = merge(&base, &ours, &theirs).unwrap().unwrap();
        let names: Vec<&str> = merged["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "c", "b"]);
    }

    #[test]
    fn a_named_element_changed_on_both_sides_conflicts_at_its_index_in_ours() {
        let base = json!({"clusters": [{"name": "x", "weight": 50}, {"name": "y", "weight": 50}]});
        let ours = json!({"clusters": [{"name": "y", "weight": 50}, {"name": "x", "weight": 70}]});
        let theirs =
            json!({"clusters": [{"name": "x", "weight": 90}, {"name": "y", "weight": 50}]});
        let conflicts = merge(&base, &ours, &theirs).unwrap_err();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].pointer, "/clusters/1/weight");
    }

    #[test]
    fn an_element_deleted_on_one_side_and_untouched_on_the_other_is_deleted() {
        let base = json!({"filters": [{"name": "a"}, {"name": "b"}]});
        let ours = json!({"filters": [{"name": "a"}, {"name": "b"}, {"name": "c"}]});
        let theirs = json!({"filters": [{"name": "a"}]});
        assert_eq!(
            merge(&base, &ours, &theirs).unwrap(),
            Some(json!({"filters": [{"name": "a"}, {"name": "c"}]}))
        );
    }

    #[test]
    fn unnamed_arrays_changed_on_both_sides_conflict_as_a_whole() {
        let base = json!({"domains": ["a"]});
        let ours = json!({"domains": ["a", "b"]});
        let theirs = json!({"domains": ["a", "c"]});
        let conflicts = merge(&base, &ours, &theirs).unwrap_err();
        assert_eq!(conflicts[0].pointer, "/domains");
    }

    #[test]
    fn deleted_on_one_side_and_changed_on_the_other_is_a_conflict_of_the_whole_resource() {
        let base = json!({"name": "c", "connect_timeout": "1s"});
        let theirs = json!({"name": "c", "connect_timeout": "2s"});
        let conflicts = merge_document(Some(&base), None, Some(&theirs)).unwrap_err();
        assert_eq!(conflicts[0].pointer, "");
        assert_eq!(conflicts[0].ours, None);
        assert_eq!(
            merge_document(Some(&base), None, Some(&base)).unwrap(),
            None
        );
    }

    #[test]
    fn a_resource_created_on_one_side_is_taken() {
        let created = json!({"name": "n"});
        assert_eq!(
            merge_document(None, None, Some(&created)).unwrap(),
            Some(created.clone())
        );
        assert_eq!(
            merge_document(None, Some(&created), None).unwrap(),
            Some(created)
        );
    }

    #[test]
    fn keys_with_slashes_and_tildes_are_escaped_in_pointers() {
        let base = json!({"a/b~c": 1});
        let ours = json!({"a/b~c": 2});
        let theirs = json!({"a/b~c": 3});
        assert_eq!(
            merge(&base, &ours, &theirs).unwrap_err()[0].pointer,
            "/a~1b~0c"
        );
    }
}
