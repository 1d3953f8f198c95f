//! Checks Envoy makes in its own code when it takes a resource, which its `validate.rules` do not
//! state: an extension without its configuration, a regular expression RE2 does not compile, two
//! virtual hosts claiming one domain, a protocol options key that names no extension. Each is a
//! resource the schema alone lets through and Envoy then refuses (a NACK waiting to happen).
//!
//! Regular expressions are parsed with `regex-syntax`, whose dialect is RE2's but for a few
//! corners (RE2's `\C` and `\Q…\E` are refused here; the `x` flag is accepted here).

use std::borrow::Cow;
use std::collections::HashMap;

use prost_reflect::{DynamicMessage, ReflectMessage as _, Value};

use super::{map_key_text, string_of, violation};
use crate::envoy::Violation;
use crate::json_pointer::escape;

/// Envoy's checks of one message, by its type; `pointer` is where it stands.
pub(super) fn check(message: &DynamicMessage, pointer: &str, out: &mut Vec<Violation>) {
    match message.descriptor().full_name() {
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter"
        | "envoy.config.listener.v3.Filter"
        | "envoy.config.listener.v3.ListenerFilter" => configured(message, pointer, out),
        "envoy.type.matcher.v3.RegexMatcher" => compiles(message, pointer, out),
        "envoy.config.route.v3.RouteConfiguration" => domains_distinct(message, pointer, out),
        "envoy.config.cluster.v3.Cluster" => protocol_options_named(message, pointer, out),
        _ => {}
    }
}

/// A filter needs its `typed_config` (or `config_discovery`): Envoy no longer finds an
/// extension by its name alone.
fn configured(filter: &DynamicMessage, pointer: &str, out: &mut Vec<Violation>) {
    if filter.has_field_by_name("typed_config") || filter.has_field_by_name("config_discovery") {
        return;
    }
    violation(
        out,
        &format!("{pointer}/typed_config"),
        format!(
            "is required: Envoy takes the filter `{}` only with its typed configuration \
             (or `config_discovery`)",
            string_of(filter, "name")
        ),
    );
}

/// A `safe_regex` must compile.
fn compiles(matcher: &DynamicMessage, pointer: &str, out: &mut Vec<Violation>) {
    let pattern = string_of(matcher, "regex");
    if let Err(error) = regex_syntax::Parser::new().parse(&pattern) {
        let text = error.to_string();
        let reason = text
            .lines()
            .find_map(|line| line.strip_prefix("error: "))
            .unwrap_or(&text);
        violation(
            out,
            &format!("{pointer}/regex"),
            format!("is not a regular expression RE2 compiles: {reason}"),
        );
    }
}

/// Each domain (compared without case) is claimed by one virtual host once, and the wildcard
/// `*` by one virtual host only.
fn domains_distinct(route: &DynamicMessage, pointer: &str, out: &mut Vec<Violation>) {
    let Some(Value::List(hosts)) = route
        .get_field_by_name("virtual_hosts")
        .map(Cow::into_owned)
    else {
        return;
    };
    let mut claimed: HashMap<String, String> = HashMap::new();
    for (host_index, host) in hosts.iter().enumerate() {
        let Some(host) = host.as_message() else {
            continue;
        };
        let Some(Value::List(domains)) = host.get_field_by_name("domains").map(Cow::into_owned)
        else {
            continue;
        };
        for (domain_index, domain) in domains.iter().enumerate() {
            let domain = domain.as_str().unwrap_or_default();
            let here = format!("{pointer}/virtual_hosts/{host_index}/domains/{domain_index}");
            match claimed.get(&domain.to_ascii_lowercase()) {
                Some(first) if domain == "*" => violation(
                    out,
                    &here,
                    format!("only one wildcard domain `*` is permitted in a route configuration; {first} claims it"),
                ),
                Some(first) => violation(
                    out,
                    &here,
                    format!("domain `{domain}` is claimed twice; {first} claims it"),
                ),
                None => {
                    claimed.insert(domain.to_ascii_lowercase(), here);
                }
            }
        }
    }
}

/// Envoy finds the extension a cluster's protocol options are for by the key: a registered
/// filter's name (`envoy.filters.network.…`, `envoy.filters.http.…`) or a protocol options
/// extension's, which is the name of its message (as for
/// `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`). A key that is neither, such as a
/// misspelt message name, is refused there.
fn protocol_options_named(cluster: &DynamicMessage, pointer: &str, out: &mut Vec<Violation>) {
    let Some(Value::Map(options)) = cluster
        .get_field_by_name("typed_extension_protocol_options")
        .map(Cow::into_owned)
    else {
        return;
    };
    for (key, value) in &options {
        let key = map_key_text(key);
        let type_name = value
            .as_message()
            .map(|any| string_of(any, "type_url"))
            .and_then(|url| url.rsplit('/').next().map(str::to_owned))
            .unwrap_or_default();
        let filter_name =
            key.starts_with("envoy.filters.network.") || key.starts_with("envoy.filters.http.");
        if key == type_name || filter_name {
            continue;
        }
        violation(
            out,
            &format!(
                "{pointer}/typed_extension_protocol_options/{}",
                escape(&key)
            ),
            format!(
                "`{key}` names no extension Envoy registers protocol options for: options of \
                 type `{type_name}` go under the key `{type_name}`"
            ),
        );
    }
}
