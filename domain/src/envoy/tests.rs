use serde_json::{json, Value};

use super::*;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../tests/fixtures/envoy/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture JSON")
}

fn violations(kind: ResourceKind, json: &Value) -> Vec<Violation> {
    validate(kind, json).expect_err("the resource is refused")
}

fn pointers(kind: ResourceKind, json: &Value) -> Vec<String> {
    violations(kind, json)
        .into_iter()
        .map(|v| v.pointer)
        .collect()
}

#[test]
fn realistic_resources_of_every_kind_are_valid_and_their_canonical_form_is_stable() {
    for (kind, name, fixture_name) in [
        (ResourceKind::Listener, "ingress_http", "listener_http_rds"),
        (
            ResourceKind::Route,
            "main_routes",
            "route_weighted_retry_headers",
        ),
        (
            ResourceKind::Cluster,
            "service_a",
            "cluster_eds_circuit_breakers",
        ),
        (ResourceKind::Cluster, "service_b", "cluster_tls_sds"),
        (ResourceKind::Endpoints, "service_a", "endpoints_service_a"),
        (
            ResourceKind::Secret,
            "client_cert",
            "secret_tls_certificate",
        ),
    ] {
        let valid = validate(kind, &fixture(fixture_name))
            .unwrap_or_else(|v| panic!("{fixture_name}: {v:?}"));
        assert_eq!(valid.name, name);
        let again = validate(kind, &valid.canonical).expect("the canonical form is valid");
        assert_eq!(
            again.canonical, valid.canonical,
            "{fixture_name}: canonical form is a fixed point"
        );
    }
}

#[test]
fn canonical_form_uses_proto_names_and_normalises_durations() {
    let mut cluster = fixture("cluster_eds_circuit_breakers");
    cluster["connectTimeout"] = cluster["connect_timeout"].take();
    cluster.as_object_mut().unwrap().remove("connect_timeout");
    cluster["connectTimeout"] = json!("0.250s");
    let valid = validate(ResourceKind::Cluster, &cluster).unwrap();
    assert_eq!(valid.canonical["connect_timeout"], "0.250s");
    assert!(valid.canonical.get("connectTimeout").is_none());
}

#[test]
fn a_misspelled_listener_field_is_named_by_its_pointer() {
    let mut listener = fixture("listener_http_rds");
    listener["adress"] = listener["address"].take();
    listener.as_object_mut().unwrap().remove("address");
    assert_eq!(
        pointers(ResourceKind::Listener, &listener),
        ["/adress"],
        "{:?}",
        violations(ResourceKind::Listener, &listener)
    );
}

#[test]
fn a_misspelled_field_inside_typed_config_is_named_by_its_pointer() {
    let mut listener = fixture("listener_http_rds");
    let hcm = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
    hcm["stat_prefx"] = hcm["stat_prefix"].take();
    hcm.as_object_mut().unwrap().remove("stat_prefix");
    assert_eq!(
        pointers(ResourceKind::Listener, &listener),
        ["/filter_chains/0/filters/0/typed_config/stat_prefx"]
    );
}

#[test]
fn a_wrong_type_is_named_by_its_pointer() {
    let mut listener = fixture("listener_http_rds");
    listener["address"]["socket_address"]["port_value"] = json!("ten thousand");
    assert_eq!(
        pointers(ResourceKind::Listener, &listener),
        ["/address/socket_address/port_value"]
    );
}

#[test]
fn an_unknown_type_url_is_refused() {
    let mut listener = fixture("listener_http_rds");
    listener["filter_chains"][0]["filters"][0]["typed_config"]["@type"] =
        json!("type.googleapis.com/envoy.extensions.filters.network.no_such_filter.v3.Filter");
    let found = violations(ResourceKind::Listener, &listener);
    assert_eq!(found.len(), 1);
    assert!(
        found[0]
            .pointer
            .starts_with("/filter_chains/0/filters/0/typed_config"),
        "{found:?}"
    );
}

#[test]
fn an_out_of_range_port_breaks_envoys_rule() {
    let mut listener = fixture("listener_http_rds");
    listener["address"]["socket_address"]["port_value"] = json!(70000);
    let found = violations(ResourceKind::Listener, &listener);
    assert_eq!(
        found[0].pointer, "/address/socket_address/port_value",
        "{found:?}"
    );
    assert!(found[0].message.contains("65535"), "{found:?}");
}

#[test]
fn a_zero_connect_timeout_breaks_envoys_rule() {
    let mut cluster = fixture("cluster_eds_circuit_breakers");
    cluster["connect_timeout"] = json!("0s");
    let found = violations(ResourceKind::Cluster, &cluster);
    assert_eq!(found[0].pointer, "/connect_timeout", "{found:?}");
}

#[test]
fn a_missing_required_field_is_named() {
    let mut endpoints = fixture("endpoints_service_a");
    endpoints.as_object_mut().unwrap().remove("cluster_name");
    assert!(pointers(ResourceKind::Endpoints, &endpoints).contains(&"/cluster_name".to_owned()));

    let mut route = fixture("route_weighted_retry_headers");
    route["virtual_hosts"][0]["routes"][1]
        .as_object_mut()
        .unwrap()
        .remove("match");
    assert!(
        pointers(ResourceKind::Route, &route)
            .contains(&"/virtual_hosts/0/routes/1/match".to_owned()),
        "{:?}",
        violations(ResourceKind::Route, &route)
    );
}

#[test]
fn an_empty_virtual_host_domain_list_breaks_envoys_rule() {
    let mut route = fixture("route_weighted_retry_headers");
    route["virtual_hosts"][0]["domains"] = json!([]);
    assert!(pointers(ResourceKind::Route, &route).contains(&"/virtual_hosts/0/domains".to_owned()));
}

#[test]
fn names_must_be_usable_in_urls() {
    assert!(check_name("outbound|80||svc.ns").is_ok());
    assert!(check_name("").is_err());
    assert!(check_name("a/b").is_err());
}

#[test]
fn a_nul_character_anywhere_is_refused_at_its_pointer() {
    let mut listener = fixture("listener_http_rds");
    listener["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] = json!("a\u{0}b");
    assert_eq!(
        pointers(ResourceKind::Listener, &listener),
        ["/filter_chains/0/filters/0/typed_config/stat_prefix"]
    );
}
