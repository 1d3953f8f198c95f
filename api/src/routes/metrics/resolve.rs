//! The statistics names of a resource, read from its document: which names Envoy tags the
//! statistics of a listener and of its HTTP connection managers with, and which virtual hosts and
//! routes of a route configuration have statistics at all.

use serde_json::Value;

/// A listener's statistics names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerStats {
    /// The listener's own: its `stat_prefix`, else its address as Envoy writes it
    /// (`127.0.0.1_8080`).
    pub listener: Option<String>,
    /// Its HTTP connection managers' `stat_prefix`es, in order, without repeats.
    pub http: Vec<String>,
}

const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// The statistics names of listener `document`.
pub(crate) fn listener_stats(document: &Value) -> ListenerStats {
    let listener = document
        .get("stat_prefix")
        .and_then(Value::as_str)
        .filter(|prefix| !prefix.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            let socket = document.pointer("/address/socket_address")?;
            let address = socket.get("address")?.as_str()?;
            let port = socket.get("port_value")?.as_u64()?;
            Some(format!("{address}_{port}"))
        });
    let mut http = Vec::new();
    let chains = document
        .get("filter_chains")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(document.get("default_filter_chain"));
    for chain in chains {
        for filter in chain
            .get("filters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let typed = filter.get("typed_config");
            let is_hcm =
                typed.and_then(|t| t.get("@type")).and_then(Value::as_str) == Some(HCM_TYPE);
            if let Some(prefix) = typed
                .filter(|_| is_hcm)
                .and_then(|t| t.get("stat_prefix"))
                .and_then(Value::as_str)
            {
                if !http.iter().any(|known| known == prefix) {
                    http.push(prefix.to_owned());
                }
            }
        }
    }
    ListenerStats { listener, http }
}

/// A virtual host of a route configuration, as its statistics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VirtualHostStats {
    /// Its name.
    pub name: String,
    /// Whether Envoy keeps statistics of the whole virtual host: only with virtual clusters
    /// (their sum, the catch-all `other` included).
    pub counted: bool,
    /// Its routes with a `stat_prefix`: (route name, stat prefix).
    pub routes: Vec<(Option<String>, String)>,
    /// How many of its routes have no `stat_prefix` (Envoy keeps no statistics of them).
    pub uncounted_routes: usize,
}

/// The virtual hosts of route configuration `document`.
pub(crate) fn virtual_hosts(document: &Value) -> Vec<VirtualHostStats> {
    document
        .get("virtual_hosts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|host| {
            let name = host.get("name")?.as_str()?.to_owned();
            let counted = host
                .get("virtual_clusters")
                .and_then(Value::as_array)
                .is_some_and(|clusters| !clusters.is_empty());
            let mut routes = Vec::new();
            let mut uncounted_routes = 0;
            for route in host
                .get("routes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match route
                    .get("stat_prefix")
                    .and_then(Value::as_str)
                    .filter(|p| !p.is_empty())
                {
                    Some(prefix) => routes.push((
                        route.get("name").and_then(Value::as_str).map(str::to_owned),
                        prefix.to_owned(),
                    )),
                    None => uncounted_routes += 1,
                }
            }
            Some(VirtualHostStats {
                name,
                counted,
                routes,
                uncounted_routes,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_listener_is_named_by_its_prefix_or_address_and_lists_its_connection_managers() {
        let listener = json!({
            "name": "ingress",
            "address": { "socket_address": { "address": "0.0.0.0", "port_value": 8080 } },
            "filter_chains": [{ "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": { "@type": HCM_TYPE, "stat_prefix": "ingress_http" } }] }],
        });
        assert_eq!(
            listener_stats(&listener),
            ListenerStats {
                listener: Some("0.0.0.0_8080".to_owned()),
                http: vec!["ingress_http".to_owned()]
            }
        );
        let mut named = listener;
        named["stat_prefix"] = json!("public");
        assert_eq!(listener_stats(&named).listener.as_deref(), Some("public"));
    }

    #[test]
    fn a_virtual_host_is_counted_only_with_virtual_clusters_and_routes_only_with_a_prefix() {
        let routes = json!({ "name": "main", "virtual_hosts": [
            { "name": "api", "domains": ["*"], "virtual_clusters": [{ "name": "all" }],
              "routes": [{ "name": "users", "stat_prefix": "users" }, { "name": "rest" }] },
            { "name": "web", "domains": ["web"], "routes": [{ "stat_prefix": "static" }] },
        ] });
        let hosts = virtual_hosts(&routes);
        assert!(hosts[0].counted);
        assert_eq!(
            hosts[0].routes,
            vec![(Some("users".to_owned()), "users".to_owned())]
        );
        assert_eq!(hosts[0].uncounted_routes, 1);
        assert!(!hosts[1].counted);
        assert_eq!(hosts[1].routes, vec![(None, "static".to_owned())]);
    }
}
