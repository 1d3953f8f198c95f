//! What Envoy refuses in its own code, refused here first with a JSON pointer; and enum names in
//! any case, as Envoy reads them.

use serde_json::{json, Value};

use super::*;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../tests/fixtures/envoy/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture JSON")
}

fn refusals(kind: ResourceKind, json: &Value) -> Vec<Violation> {
    validate(kind, json).expect_err("the resource is refused")
}

const HTTP_FILTERS: &str = "/filter_chains/0/filters/0/typed_config/http_filters";

#[test]
fn an_http_filter_without_typed_config_is_refused_at_its_pointer() {
    let mut listener = fixture("listener_http_rds");
    listener.pointer_mut(HTTP_FILTERS).unwrap()[0] = json!({ "name": "envoy.filters.http.router" });
    let refused = refusals(ResourceKind::Listener, &listener);
    assert_eq!(refused[0].pointer, format!("{HTTP_FILTERS}/0/typed_config"));
    assert!(
        refused[0].message.contains("envoy.filters.http.router"),
        "{refused:?}"
    );
}

#[test]
fn a_network_or_listener_filter_without_typed_config_is_refused() {
    let mut listener = fixture("listener_http_rds");
    listener["listener_filters"] = json!([{ "name": "envoy.filters.listener.tls_inspector" }]);
    listener["filter_chains"][0]["filters"][0] =
        json!({ "name": "envoy.filters.network.http_connection_manager" });
    let pointers: Vec<String> = refusals(ResourceKind::Listener, &listener)
        .into_iter()
        .map(|v| v.pointer)
        .collect();
    assert!(
        pointers.contains(&"/filter_chains/0/filters/0/typed_config".to_owned()),
        "{pointers:?}"
    );
    assert!(
        pointers.contains(&"/listener_filters/0/typed_config".to_owned()),
        "{pointers:?}"
    );
}

#[test]
fn a_safe_regex_that_does_not_compile_is_refused_and_one_that_does_is_taken() {
    let mut route = fixture("route_weighted_retry_headers");
    route["virtual_hosts"][0]["routes"][0]["match"] =
        json!({ "safe_regex": { "regex": "/api/(v1|v2" } });
    let refused = refusals(ResourceKind::Route, &route);
    assert_eq!(
        refused[0].pointer,
        "/virtual_hosts/0/routes/0/match/safe_regex/regex"
    );
    assert!(refused[0].message.contains("RE2"), "{refused:?}");
    route["virtual_hosts"][0]["routes"][0]["match"] =
        json!({ "safe_regex": { "regex": "/api/(v1|v2)/.*" } });
    validate(ResourceKind::Route, &route).expect("a regular expression that compiles");
}

#[test]
fn two_virtual_hosts_claiming_the_wildcard_domain_are_refused() {
    let mut route = fixture("route_weighted_retry_headers");
    let mut second = route["virtual_hosts"][0].clone();
    second["name"] = json!("other");
    route["virtual_hosts"].as_array_mut().unwrap().push(second);
    let refused = refusals(ResourceKind::Route, &route);
    assert_eq!(refused[0].pointer, "/virtual_hosts/1/domains/0");
    assert!(
        refused[0].message.contains("/virtual_hosts/0/domains/0"),
        "names who claims it first: {refused:?}"
    );
}

#[test]
fn a_domain_claimed_twice_in_any_case_is_refused() {
    let mut route = fixture("route_weighted_retry_headers");
    route["virtual_hosts"][0]["domains"] = json!(["api.example.com", "API.example.com"]);
    assert_eq!(
        refusals(ResourceKind::Route, &route)[0].pointer,
        "/virtual_hosts/0/domains/1"
    );
}

#[test]
fn a_protocol_options_key_naming_no_extension_is_refused() {
    let mut cluster = fixture("cluster_eds_circuit_breakers");
    let options = json!({
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": { "http2_protocol_options": {} }
    });
    cluster["typed_extension_protocol_options"] =
        json!({ "envoy.extensions.upstreams.http.v3.HttpProtocolOption": options });
    let refused = refusals(ResourceKind::Cluster, &cluster);
    assert_eq!(
        refused[0].pointer,
        "/typed_extension_protocol_options/envoy.extensions.upstreams.http.v3.HttpProtocolOption"
    );
    cluster["typed_extension_protocol_options"] =
        json!({ "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options });
    validate(ResourceKind::Cluster, &cluster).expect("the key Envoy registers");
}

#[test]
fn enum_names_in_lower_case_are_taken_and_stored_as_envoy_spells_them() {
    let mut cluster = fixture("cluster_eds_circuit_breakers");
    cluster["type"] = json!("eds");
    cluster["lb_policy"] = json!("least_request");
    let valid = validate(ResourceKind::Cluster, &cluster).expect("lower-case enum names");
    assert_eq!(valid.canonical["type"], "EDS");
    assert_eq!(valid.canonical["lb_policy"], "LEAST_REQUEST");

    // Inside an `Any`, and a name of mixed case (`TLSv1_3`).
    let mut listener = fixture("listener_http_rds");
    listener
        .pointer_mut("/filter_chains/0/filters/0/typed_config")
        .unwrap()["codec_type"] = json!("http2");
    listener["filter_chains"][0]["transport_socket"] = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": { "tls_params": { "tls_minimum_protocol_version": "tlsv1_3" } }
        }
    });
    let valid = validate(ResourceKind::Listener, &listener).expect("enum names in any case");
    let chain = &valid.canonical["filter_chains"][0];
    assert_eq!(chain["filters"][0]["typed_config"]["codec_type"], "HTTP2");
    assert_eq!(
        chain["transport_socket"]["typed_config"]["common_tls_context"]["tls_params"]
            ["tls_minimum_protocol_version"],
        "TLSv1_3"
    );

    cluster["type"] = json!("no_such_type");
    assert_eq!(
        refusals(ResourceKind::Cluster, &cluster)[0].pointer,
        "/type"
    );
}
