use cqrs_es::test::TestFramework;
use serde_json::{json, Value};

use super::limits::CommitContext;
use super::shared::Shared;
use super::*;
use crate::envoy::ResourceKind;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../tests/fixtures/envoy/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture JSON")
}

/// A change putting a fixture; a secret's material is sealed (with a fixed key), as every write
/// path does before the aggregate sees it.
fn put(kind: ResourceKind, fixture_name: &str, expect: Expect) -> Change {
    let mut change = Change::put(kind, &fixture(fixture_name), expect).expect("valid fixture");
    if let Change::Put {
        kind: ResourceKind::Secret,
        document,
        ..
    } = &mut change
    {
        let key = crate::secrets::Key::from_base64("dGVzdC1kYXRhLWtleS10ZXN0LWRhdGEta2V5LXRlc3Q=")
            .expect("a 32-byte key");
        crate::secrets::seal_document(document, "k1", &key);
    }
    change
}

#[test]
fn a_secret_with_material_in_clear_is_not_stored() {
    let clear = Change::put(
        ResourceKind::Secret,
        &fixture("secret_tls_certificate"),
        Expect::Absent,
    )
    .unwrap();
    let refused = decide(Vec::new(), vec![clear]).unwrap_err();
    let ConfigError::SecretMaterial { violations, .. } = refused else {
        panic!("{refused:?}");
    };
    assert_eq!(violations[0].pointer, "/tls_certificate/private_key");
}

fn commit(changes: Vec<Change>) -> ConfigCommand {
    ConfigCommand::Commit {
        message: Some("test".into()),
        operation: Operation::Create,
        changes,
    }
}

/// The events of a commit of `changes` on a repository that has seen `given`.
fn decide(given: Vec<ConfigEvent>, changes: Vec<Change>) -> Result<Vec<ConfigEvent>, ConfigError> {
    TestFramework::<ConfigRepo>::with(CommitContext::default())
        .given(given)
        .when(commit(changes))
        .inspect_result()
}

fn full_stack() -> Vec<Change> {
    vec![
        put(
            ResourceKind::Endpoints,
            "endpoints_service_a",
            Expect::Absent,
        ),
        put(
            ResourceKind::Cluster,
            "cluster_eds_circuit_breakers",
            Expect::Absent,
        ),
        put(
            ResourceKind::Secret,
            "secret_tls_certificate",
            Expect::Absent,
        ),
        put(ResourceKind::Cluster, "cluster_tls_sds", Expect::Absent),
        put(
            ResourceKind::Route,
            "route_weighted_retry_headers",
            Expect::Absent,
        ),
        put(ResourceKind::Listener, "listener_http_rds", Expect::Absent),
    ]
}

#[test]
fn references_follow_rds_weighted_clusters_eds_and_sds() {
    let names = |kind, fixture_name| -> Vec<(ResourceKind, String)> {
        let change = put(kind, fixture_name, Expect::Anything);
        let Change::Put { refs, .. } = change else {
            unreachable!()
        };
        refs.into_iter().map(|r| (r.kind, r.name)).collect()
    };
    assert_eq!(
        names(ResourceKind::Listener, "listener_http_rds"),
        [(ResourceKind::Route, "main_routes".to_owned())]
    );
    assert_eq!(
        names(ResourceKind::Route, "route_weighted_retry_headers"),
        [
            (ResourceKind::Cluster, "service_a".to_owned()),
            (ResourceKind::Cluster, "service_b".to_owned())
        ]
    );
    assert_eq!(
        names(ResourceKind::Cluster, "cluster_eds_circuit_breakers"),
        [(ResourceKind::Endpoints, "service_a".to_owned())]
    );
    assert_eq!(
        names(ResourceKind::Cluster, "cluster_tls_sds"),
        [(ResourceKind::Secret, "client_cert".to_owned())]
    );
}

#[test]
fn a_commit_is_one_revision_with_a_header_and_an_event_per_resource() {
    let events = decide(vec![], full_stack()).unwrap();
    assert_eq!(events.len(), 7);
    assert!(matches!(
        &events[0],
        ConfigEvent::Committed { revision: 1, .. }
    ));
    assert!(events[1..]
        .iter()
        .all(|e| matches!(e, ConfigEvent::ResourceCreated { revision: 1, .. })));
}

#[test]
fn a_route_to_a_missing_cluster_is_refused_naming_it() {
    let error = decide(
        vec![],
        vec![put(
            ResourceKind::Route,
            "route_weighted_retry_headers",
            Expect::Absent,
        )],
    )
    .unwrap_err();
    let ConfigError::DanglingReferences(dangling) = &error else {
        panic!("{error:?}")
    };
    let missing: Vec<_> = dangling.iter().map(|(_, to)| to.name.as_str()).collect();
    assert_eq!(missing, ["service_a", "service_b"]);
    assert!(error
        .to_string()
        .contains("route `main_routes` refers to missing cluster `service_a`"));
}

#[test]
fn deleting_a_cluster_a_route_uses_is_refused_naming_the_route() {
    let given = decide(vec![], full_stack()).unwrap();
    let error = decide(
        given,
        vec![Change::Delete {
            kind: ResourceKind::Cluster,
            name: "service_a".into(),
            expect: Expect::Present,
        }],
    )
    .unwrap_err();
    assert_eq!(
        error,
        ConfigError::StillReferenced {
            kind: ResourceKind::Cluster,
            name: "service_a".into(),
            by: vec![ResourceRef {
                kind: ResourceKind::Route,
                name: "main_routes".into()
            }],
        }
    );
}

#[test]
fn deleting_a_route_and_its_listener_together_is_allowed() {
    let given = decide(vec![], full_stack()).unwrap();
    let events = decide(
        given,
        vec![
            Change::Delete {
                kind: ResourceKind::Listener,
                name: "ingress_http".into(),
                expect: Expect::Present,
            },
            Change::Delete {
                kind: ResourceKind::Route,
                name: "main_routes".into(),
                expect: Expect::Present,
            },
        ],
    )
    .unwrap();
    assert!(matches!(
        &events[0],
        ConfigEvent::Committed { revision: 2, .. }
    ));
    assert_eq!(events.len(), 3);
}

#[test]
fn a_stale_version_is_a_mismatch_and_the_current_one_passes() {
    let given = decide(vec![], full_stack()).unwrap();
    let mut cluster = fixture("cluster_eds_circuit_breakers");
    cluster["connect_timeout"] = json!("2s");
    let stale = Change::put(ResourceKind::Cluster, &cluster, Expect::Version(7)).unwrap();
    assert!(matches!(
        decide(given.clone(), vec![stale]),
        Err(ConfigError::VersionMismatch {
            actual: 1,
            expected: 7,
            ..
        })
    ));
    let current = Change::put(ResourceKind::Cluster, &cluster, Expect::Version(1)).unwrap();
    let events = decide(given, vec![current]).unwrap();
    assert!(matches!(
        &events[1],
        ConfigEvent::ResourceReplaced { revision: 2, .. }
    ));
}

#[test]
fn writing_an_unchanged_document_commits_nothing() {
    let given = decide(vec![], full_stack()).unwrap();
    let same = put(
        ResourceKind::Cluster,
        "cluster_eds_circuit_breakers",
        Expect::Present,
    );
    assert_eq!(decide(given, vec![same]).unwrap(), vec![]);
}

#[test]
fn creating_an_existing_resource_and_changing_one_twice_are_refused() {
    let given = decide(vec![], full_stack()).unwrap();
    let again = put(
        ResourceKind::Endpoints,
        "endpoints_service_a",
        Expect::Absent,
    );
    assert!(matches!(
        decide(given, vec![again]),
        Err(ConfigError::AlreadyExists { .. })
    ));
    let twice = vec![
        put(
            ResourceKind::Endpoints,
            "endpoints_service_a",
            Expect::Anything,
        ),
        put(
            ResourceKind::Endpoints,
            "endpoints_service_a",
            Expect::Anything,
        ),
    ];
    assert!(matches!(
        decide(vec![], twice),
        Err(ConfigError::ChangedTwice { .. })
    ));
}

#[test]
fn content_hash_is_stable_for_equal_documents() {
    assert_eq!(
        content_hash(&json!({"a": 1, "b": [1, 2]})),
        content_hash(&json!({"b": [1, 2], "a": 1}))
    );
    assert_ne!(
        content_hash(&json!({"a": 1})),
        content_hash(&json!({"a": 2}))
    );
}

fn group(name: &str, parent: Option<&str>, resources: &Value) -> Change {
    let mut json = json!({ "name": name, "resources": resources });
    if let Some(parent) = parent {
        json["parent"] = json!(parent);
    }
    Change::put(ResourceKind::Group, &json, Expect::Anything).expect("valid group")
}

#[test]
fn groups_refer_to_their_parent_and_attachments_and_protect_them() {
    let mut given = decide(vec![], full_stack()).unwrap();
    let attach = json!([{ "kind": "cluster", "name": "service_a" }]);
    given.extend(
        decide(
            given.clone(),
            vec![
                group("all", None, &json!([])),
                group("edge", Some("all"), &attach),
            ],
        )
        .unwrap(),
    );
    let error = decide(
        given.clone(),
        vec![Change::Delete {
            kind: ResourceKind::Cluster,
            name: "service_a".into(),
            expect: Expect::Present,
        }],
    )
    .unwrap_err();
    assert!(error.to_string().contains("route `main_routes`"), "{error}");
    let orphan = decide(
        given.clone(),
        vec![group("lost", Some("nowhere"), &json!([]))],
    )
    .unwrap_err();
    assert!(
        matches!(orphan, ConfigError::DanglingReferences(_)),
        "{orphan:?}"
    );
    let parent_in_use = decide(
        given,
        vec![Change::Delete {
            kind: ResourceKind::Group,
            name: "all".into(),
            expect: Expect::Present,
        }],
    )
    .unwrap_err();
    assert!(
        parent_in_use.to_string().contains("group `edge`"),
        "{parent_in_use}"
    );
}

#[test]
fn a_cycle_of_parents_is_refused() {
    let given = decide(
        vec![],
        vec![
            group("a", None, &json!([])),
            group("b", Some("a"), &json!([])),
        ],
    )
    .unwrap();
    let error = decide(given, vec![group("a", Some("b"), &json!([]))]).unwrap_err();
    assert!(matches!(error, ConfigError::GroupCycle(_)), "{error:?}");
}

fn fork_of(revision: u64, resources: Vec<Change>) -> ConfigCommand {
    ConfigCommand::Fork {
        message: None,
        base: BranchPoint {
            branch: MAIN_BRANCH.into(),
            revision,
        },
        resources,
    }
}

#[test]
fn a_fork_creates_the_base_resources_at_the_revision_after_the_base() {
    let events = TestFramework::<ConfigRepo>::with(CommitContext::default())
        .given_no_previous_events()
        .when(fork_of(7, full_stack()))
        .inspect_result()
        .unwrap();
    assert!(matches!(
        &events[0],
        ConfigEvent::Committed {
            revision: 8,
            operation: Operation::Branch,
            ..
        }
    ));
    assert!(
        matches!(&events[1], ConfigEvent::Branched { revision: 8, base } if base.revision == 7)
    );
    assert_eq!(events.len(), 2 + full_stack().len());
}

#[test]
fn a_branch_cannot_be_forked_twice_nor_take_commits_once_deleted() {
    let forked = TestFramework::<ConfigRepo>::with(CommitContext::default())
        .given_no_previous_events()
        .when(fork_of(0, Vec::new()))
        .inspect_result()
        .unwrap();
    TestFramework::<ConfigRepo>::with(CommitContext::default())
        .given(forked.clone())
        .when(fork_of(0, Vec::new()))
        .then_expect_error(ConfigError::BranchExists);
    let mut deleted = forked;
    deleted.push(ConfigEvent::BranchDeleted { revision: 1 });
    TestFramework::<ConfigRepo>::with(CommitContext::default())
        .given(deleted)
        .when(commit(full_stack()))
        .then_expect_error(ConfigError::BranchDeleted);
    TestFramework::<ConfigRepo>::with(CommitContext::default())
        .given_no_previous_events()
        .when(ConfigCommand::DeleteBranch)
        .then_expect_error(ConfigError::NotDeletable);
}

#[test]
fn branch_names_are_checked() {
    assert!(valid_branch_name("canary-1.2_x").is_ok());
    for bad in ["main", "", "-x", "Upper", "a/b", &"x".repeat(64)] {
        assert!(valid_branch_name(bad).is_err(), "{bad}");
    }
}

fn template_change(timeout: &str) -> Change {
    Change::put(
        ResourceKind::Template,
        &json!({
            "name": "web", "kind": "cluster", "parameters": { "port": {} },
            "body": { "type": "STATIC", "connect_timeout": timeout, "load_assignment": {
                "cluster_name": "{{name}}", "endpoints": [{ "lb_endpoints": [{ "endpoint": {
                "address": { "socket_address": { "address": "10.0.0.1", "port_value": "{{port}}" } } } }] }] } }
        }),
        Expect::Anything,
    )
    .expect("valid template")
}

fn derive(name: &str, port: u16) -> Change {
    Change::Derive {
        kind: ResourceKind::Cluster,
        name: name.to_owned(),
        derivation: template::Derivation {
            template: "web".into(),
            parameters: [("port".to_owned(), json!(port))].into(),
            overrides: None,
        },
        expect: Expect::Anything,
    }
}

#[test]
fn a_template_change_re_renders_every_derived_resource_in_the_same_commit() {
    let given = decide(
        Vec::new(),
        vec![derive("a", 1), derive("b", 2), template_change("1s")],
    )
    .unwrap();
    let events = decide(given, vec![template_change("5s")]).unwrap();
    let replaced: Vec<(&str, &Value)> = events
        .iter()
        .filter_map(|event| match event {
            ConfigEvent::ResourceReplaced {
                name,
                document,
                derivation: Some(_),
                ..
            } => Some((name.as_str(), &document["connect_timeout"])),
            _ => None,
        })
        .collect();
    assert_eq!(replaced, [("a", &json!("5s")), ("b", &json!("5s"))]);
}

#[test]
fn a_template_in_use_cannot_be_deleted_and_a_bad_render_is_refused() {
    let given = decide(Vec::new(), vec![template_change("1s"), derive("a", 1)]).unwrap();
    let deleting = decide(
        given.clone(),
        vec![Change::Delete {
            kind: ResourceKind::Template,
            name: "web".into(),
            expect: Expect::Present,
        }],
    );
    assert!(matches!(deleting, Err(ConfigError::StillReferenced { .. })));
    let broken = decide(given, vec![template_change("soon")]);
    assert!(
        matches!(&broken, Err(ConfigError::Render { name, .. }) if name == "a"),
        "{broken:?}"
    );
}

/// A route whose only cluster is `cluster`.
fn route_to(cluster: &str) -> Change {
    Change::put(
        ResourceKind::Route,
        &json!({ "name": "r", "virtual_hosts": [{ "name": "all", "domains": ["*"],
                 "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster } }] }] }),
        Expect::Anything,
    )
    .expect("valid route")
}

fn decide_with(shared: Shared, changes: Vec<Change>) -> Result<Vec<ConfigEvent>, ConfigError> {
    TestFramework::<ConfigRepo>::with(CommitContext::from(shared))
        .given(Vec::new())
        .when(commit(changes))
        .inspect_result()
}

#[test]
fn a_reference_to_another_tenants_cluster_needs_a_grant() {
    let refused = decide_with(Shared::default(), vec![route_to("acme/payments")]);
    let Err(ConfigError::DanglingReferences(dangling)) = &refused else {
        panic!("{refused:?}");
    };
    assert_eq!(dangling[0].1.name, "acme/payments");
    assert!(refused
        .unwrap_err()
        .to_string()
        .contains("tenant `acme` does not share"));

    let mut shared = Shared::default();
    shared.insert(ResourceKind::Cluster, "acme/payments".into(), None);
    let events = decide_with(shared.clone(), vec![route_to("acme/payments")]).unwrap();
    assert!(matches!(
        &events[1],
        ConfigEvent::ResourceCreated { refs, .. }
            if refs.iter().any(|r| r.name == "acme/payments")
    ));
    // A shared template is not a shared cluster.
    let mut other_kind = Shared::default();
    other_kind.insert(ResourceKind::Template, "acme/payments".into(), None);
    assert!(decide_with(other_kind, vec![route_to("acme/payments")]).is_err());
}

#[test]
fn a_resource_is_rendered_from_a_shared_template() {
    let Change::Put { document, .. } = template_change("3s") else {
        unreachable!()
    };
    let mut shared = Shared::default();
    shared.insert(ResourceKind::Template, "acme/web".into(), Some(document));
    let mut declared = derive("a", 8080);
    if let Change::Derive { derivation, .. } = &mut declared {
        derivation.template = "acme/web".into();
    }
    let events = decide_with(shared, vec![declared.clone()]).unwrap();
    let ConfigEvent::ResourceCreated { document, refs, .. } = &events[1] else {
        panic!("{events:?}");
    };
    assert_eq!(document["connect_timeout"], json!("3s"));
    assert!(refs.contains(&ResourceRef {
        kind: ResourceKind::Template,
        name: "acme/web".into()
    }));
    let unshared = decide_with(Shared::default(), vec![declared]);
    assert!(
        matches!(&unshared, Err(ConfigError::Render { template, .. }) if template == "acme/web"),
        "{unshared:?}"
    );
}
