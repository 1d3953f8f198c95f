use serde_json::{json, Value};

use super::*;

fn pointers(kind: ResourceKind, document: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let mut copy = document.clone();
    for_each(kind, &mut copy, &mut |value| {
        found.push(value.pointer.to_owned());
    });
    found.sort();
    found
}

fn cluster_with_inline_key(private_key: &Value) -> Value {
    json!({
        "name": "upstream",
        "connect_timeout": "1s",
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "tls_certificates": [{
                        "certificate_chain": { "inline_string": "CERT" },
                        "private_key": private_key
                    }]
                }
            }
        }
    })
}

#[test]
fn the_schema_names_the_sensitive_fields_of_every_message_type() {
    let names = sensitive_field_names();
    for expected in [
        "envoy.extensions.transport_sockets.tls.v3.GenericSecret.secret",
        "envoy.extensions.transport_sockets.tls.v3.GenericSecret.secrets",
        "envoy.extensions.transport_sockets.tls.v3.TlsCertificate.private_key",
        "envoy.extensions.transport_sockets.tls.v3.TlsCertificate.password",
        "envoy.extensions.transport_sockets.tls.v3.TlsSessionTicketKeys.keys",
        "envoy.extensions.filters.http.basic_auth.v3.BasicAuth.users",
    ] {
        assert!(names.iter().any(|name| name == expected), "{expected}");
    }
    assert!(!names
        .iter()
        .any(|name| name.ends_with("TlsCertificate.certificate_chain")));
}

#[test]
fn every_value_of_a_generic_secrets_map_is_sensitive() {
    let secret = json!({ "name": "api", "generic_secret": {
        "secrets": { "api": { "inline_string": "s3cr3t" }, "b/c": { "inline_bytes": "eA==" } } } });
    assert_eq!(
        pointers(ResourceKind::Secret, &secret),
        [
            "/generic_secret/secrets/api",
            "/generic_secret/secrets/b~1c"
        ]
    );
}

#[test]
fn camel_case_spellings_are_sensitive_too() {
    let secret = json!({ "name": "s", "tlsCertificate": {
        "certificateChain": { "inlineString": "CERT" },
        "privateKey": { "inlineString": "KEY" } } });
    assert_eq!(
        pointers(ResourceKind::Secret, &secret),
        ["/tlsCertificate/privateKey"]
    );
    let violations = stored_material_violations(ResourceKind::Secret, &secret);
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].pointer, "/tlsCertificate/privateKey");
}

#[test]
fn an_inline_private_key_in_a_clusters_tls_context_is_refused_and_a_file_is_not() {
    let refused = stored_material_violations(
        ResourceKind::Cluster,
        &cluster_with_inline_key(&json!({ "inline_string": "KEY" })),
    );
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        refused[0].pointer,
        "/transport_socket/typed_config/common_tls_context/tls_certificates/0/private_key"
    );
    assert!(refused[0].message.contains("SDS"), "{}", refused[0].message);
    for reference in [
        json!({ "filename": "/etc/envoy/key.pem" }),
        json!({ "environment_variable": "KEY" }),
    ] {
        let document = cluster_with_inline_key(&reference);
        assert!(stored_material_violations(ResourceKind::Cluster, &document).is_empty());
    }
}

#[test]
fn sealed_material_is_allowed_in_a_secret_only() {
    let sealed = json!({ "inline_string": format!("{SEALED_PREFIX}k1:AAAA") });
    let secret = json!({ "name": "s", "generic_secret": { "secret": sealed.clone() } });
    assert!(stored_material_violations(ResourceKind::Secret, &secret).is_empty());
    let cluster = cluster_with_inline_key(&sealed);
    assert_eq!(
        stored_material_violations(ResourceKind::Cluster, &cluster).len(),
        1
    );
}

#[test]
fn a_typed_struct_cannot_hide_a_sensitive_field_from_the_walk() {
    let listener = json!({ "name": "l", "filter_chains": [{ "filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
            "type_url": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "value": { "http_filters": [{ "name": "basic", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuth",
                "users": { "inline_string": "user:{SHA}hash" } } }] }
        } }] }] });
    let refused = super::super::validate(ResourceKind::Listener, &listener)
        .expect_err("a payload typed only by a TypedStruct is not stored");
    assert_eq!(
        refused[0].pointer,
        "/filter_chains/0/filters/0/typed_config"
    );
}

#[test]
fn sensitive_fields_inside_an_any_are_found_by_its_type() {
    let listener = json!({ "name": "l", "filter_chains": [{ "filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "in",
            "http_filters": [{ "name": "basic", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuth",
                "users": { "inline_string": "user:{SHA}hash" } } }] } }] }] });
    assert_eq!(
        pointers(ResourceKind::Listener, &listener),
        ["/filter_chains/0/filters/0/typed_config/http_filters/0/typed_config/users"]
    );
}

#[test]
fn redaction_hides_material_and_keeps_references_and_public_parts() {
    let secret = json!({ "name": "s",
        "generic_secret": { "secrets": { "api": { "inline_string": "s3cr3t" } } },
        "tls_certificate": {
            "certificate_chain": { "inline_string": "CERT" },
            "private_key": { "filename": "/etc/key.pem" } } });
    let shown = redact(ResourceKind::Secret, secret);
    assert_eq!(
        shown["generic_secret"]["secrets"]["api"],
        json!({ "redacted": true })
    );
    assert_eq!(
        shown["tls_certificate"]["private_key"]["filename"],
        "/etc/key.pem"
    );
    assert_eq!(
        shown["tls_certificate"]["certificate_chain"]["inline_string"],
        "CERT"
    );
    assert!(!shown.to_string().contains("s3cr3t"));
}
