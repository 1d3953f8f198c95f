//! The xDS protocol rules, with a raw gRPC client in place of Envoy: content-hash versions (an
//! irrelevant commit pushes nothing), make-before-break order, removals only after the dependents
//! are answered, stale nonces ignored, subscriptions by name and wildcard, the per-type services.

use std::time::Duration;

use efms_domain::Role;
use efms_tests::TestApp;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value as ProtoValue};
use prost::Message as _;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const BASE: &str = "/api/v1/tenants/acme";
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(600);
const WAIT: Duration = Duration::from_secs(10);

fn cluster(name: &str) -> Value {
    json!({ "name": name, "connect_timeout": "1s", "type": "STATIC", "load_assignment": {
        "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
            "socket_address": { "address": "127.0.0.1", "port_value": 9 } } } }] }] } })
}

fn route(name: &str, cluster: &str) -> Value {
    json!({ "name": name, "virtual_hosts": [{ "name": "all", "domains": ["*"],
        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster } }] }] })
}

/// Tenant `acme`: clusters c1 and c2, route r → c2, listener l (RDS r), group g attaching l.
async fn configured(pool: PgPool) -> TestApp {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let listener = json!({ "name": "l",
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": 10_000 } },
        "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.http_connection_manager",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "l", "rds": { "route_config_name": "r",
                    "config_source": { "ads": {}, "resource_api_version": "V3" } },
                "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }] } }] }] });
    for (collection, body) in [
        ("clusters", cluster("c1")),
        ("clusters", cluster("c2")),
        ("routes", route("r", "c2")),
        ("listeners", listener),
        (
            "groups",
            json!({ "name": "g", "resources": [{ "kind": "listener", "name": "l" }] }),
        ),
    ] {
        let answer = app.post(&format!("{BASE}/{collection}"), &body).await;
        assert_eq!(answer.status, 201, "{}", answer.body);
    }
    app
}

fn node() -> Node {
    node_named("probe-1")
}

fn node_named(id: &str) -> Node {
    let text = |value: &str| ProtoValue {
        kind: Some(Kind::StringValue(value.to_owned())),
    };
    Node {
        id: id.to_owned(),
        metadata: Some(Struct {
            fields: [("group".to_owned(), text("g"))].into(),
        }),
        ..Node::default()
    }
}

fn authorized<T>(app: &TestApp, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let token = app.token(Role::Proxy, Some("acme"));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// A SotW ADS stream driven by hand.
struct Sotw {
    node_id: &'static str,
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(app: &TestApp) -> Self {
        Self::open_as(app, "probe-1").await
    }

    async fn open_as(app: &TestApp, node_id: &'static str) -> Self {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", app.grpc))
            .await
            .unwrap();
        let (requests, outbound) = mpsc::channel(16);
        let responses = client
            .stream_aggregated_resources(authorized(app, ReceiverStream::new(outbound)))
            .await
            .unwrap()
            .into_inner();
        Self {
            node_id,
            requests,
            responses,
        }
    }

    async fn send(&self, type_url: &str, names: &[&str], answering: Option<&DiscoveryResponse>) {
        self.requests
            .send(DiscoveryRequest {
                node: Some(node_named(self.node_id)),
                type_url: type_url.to_owned(),
                resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
                version_info: answering
                    .map(|r| r.version_info.clone())
                    .unwrap_or_default(),
                response_nonce: answering.map(|r| r.nonce.clone()).unwrap_or_default(),
                ..DiscoveryRequest::default()
            })
            .await
            .unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("a response in time")
            .unwrap()
            .unwrap()
    }

    async fn quiet(&mut self) {
        if let Ok(message) = tokio::time::timeout(QUIET, self.responses.message()).await {
            panic!(
                "expected nothing, got {:?}",
                message.map(|m| m.map(|r| r.type_url))
            );
        }
    }

    /// Subscribes to clusters, listeners (wildcard) and route `r`; ACKs the three answers.
    async fn synced(app: &TestApp) -> Self {
        let mut stream = Self::open(app).await;
        stream.send(CDS, &[], None).await;
        stream.send(LDS, &[], None).await;
        stream.send(RDS, &["r"], None).await;
        for _ in 0..3 {
            let response = stream.next().await;
            let names: Vec<&str> = if response.type_url == RDS {
                vec!["r"]
            } else {
                vec![]
            };
            stream
                .send(&response.type_url.clone(), &names, Some(&response))
                .await;
        }
        stream
    }
}

fn cluster_names(response: &DiscoveryResponse) -> Vec<String> {
    let mut names: Vec<String> = response
        .resources
        .iter()
        .map(|any| Cluster::decode(any.value.as_slice()).unwrap().name)
        .collect();
    names.sort();
    names
}

fn route_names(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .map(|any| {
            RouteConfiguration::decode(any.value.as_slice())
                .unwrap()
                .name
        })
        .collect()
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn sotw_a_commit_that_changes_nothing_the_group_sees_pushes_nothing(pool: PgPool) {
    let app = configured(pool).await;
    let mut stream = Sotw::synced(&app).await;
    app.post(&format!("{BASE}/clusters"), &cluster("unrelated"))
        .await;
    app.put(&format!("{BASE}/routes/r"), &route("r", "c2"), &[])
        .await;
    stream.quiet().await;
    app.put(
        &format!("{BASE}/clusters/c2"),
        &json!({ "name": "c2", "connect_timeout": "2s",
        "type": "STATIC", "load_assignment": { "cluster_name": "c2" } }),
        &[],
    )
    .await;
    let response = stream.next().await;
    assert_eq!(response.type_url, CDS, "a change the group sees is pushed");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn sotw_clusters_go_before_routes_and_a_cluster_leaves_only_after_the_route_is_answered(
    pool: PgPool,
) {
    let app = configured(pool).await;
    let mut stream = Sotw::synced(&app).await;
    app.put(&format!("{BASE}/routes/r"), &route("r", "c1"), &[])
        .await;
    let clusters = stream.next().await;
    assert_eq!(clusters.type_url, CDS);
    assert_eq!(
        cluster_names(&clusters),
        ["c1", "c2"],
        "c2 stays while the old route may use it"
    );
    let routes = stream.next().await;
    assert_eq!(routes.type_url, RDS);
    stream.send(CDS, &[], Some(&clusters)).await;
    stream.quiet().await;
    stream.send(RDS, &["r"], Some(&routes)).await;
    let clusters = stream.next().await;
    assert_eq!(clusters.type_url, CDS);
    assert_eq!(
        cluster_names(&clusters),
        ["c1"],
        "c2 leaves once the route is answered"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn sotw_names_are_honoured_and_stale_nonces_ignored(pool: PgPool) {
    let app = configured(pool).await;
    app.post(&format!("{BASE}/routes"), &route("r2", "c1"))
        .await;
    app.put(
        &format!("{BASE}/groups/g"),
        &json!({ "name": "g", "resources": [
            { "kind": "listener", "name": "l" }, { "kind": "route", "name": "r2" } ] }),
        &[],
    )
    .await;
    let mut stream = Sotw::open(&app).await;
    stream.send(RDS, &["r"], None).await;
    let first = stream.next().await;
    assert_eq!(route_names(&first), ["r"], "only the route asked for");
    let stale = DiscoveryResponse {
        nonce: "not-the-last-nonce".to_owned(),
        ..first.clone()
    };
    stream.send(RDS, &["r", "r2"], Some(&stale)).await;
    stream.quiet().await;
    stream.send(RDS, &["r", "r2"], Some(&first)).await;
    let both = stream.next().await;
    let mut names = route_names(&both);
    names.sort();
    assert_eq!(names, ["r", "r2"]);
}

/// A delta ADS stream driven by hand.
struct Delta {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn open(app: &TestApp) -> Self {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", app.grpc))
            .await
            .unwrap();
        let (requests, outbound) = mpsc::channel(16);
        let responses = client
            .delta_aggregated_resources(authorized(app, ReceiverStream::new(outbound)))
            .await
            .unwrap()
            .into_inner();
        Self {
            requests,
            responses,
        }
    }

    async fn send(&self, request: DeltaDiscoveryRequest) {
        self.requests
            .send(DeltaDiscoveryRequest {
                node: Some(node()),
                ..request
            })
            .await
            .unwrap();
    }

    async fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("a response in time")
            .unwrap()
            .unwrap()
    }

    async fn quiet(&mut self) {
        if let Ok(message) = tokio::time::timeout(QUIET, self.responses.message()).await {
            panic!(
                "expected nothing, got {:?}",
                message.map(|m| m.map(|r| r.type_url))
            );
        }
    }
}

fn subscribe(type_url: &str, names: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_owned(),
        resource_names_subscribe: names.iter().map(|n| (*n).to_owned()).collect(),
        ..DeltaDiscoveryRequest::default()
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn delta_sends_only_changes_and_removes_a_cluster_after_the_route_is_answered(pool: PgPool) {
    let app = configured(pool).await;
    let mut stream = Delta::open(&app).await;
    stream.send(subscribe(CDS, &[])).await;
    stream.send(subscribe(LDS, &[])).await;
    stream.send(subscribe(RDS, &["r"])).await;
    for _ in 0..3 {
        let response = stream.next().await;
        if response.type_url == CDS {
            let names: Vec<&str> = response.resources.iter().map(|r| r.name.as_str()).collect();
            assert_eq!(names, ["c2"], "the wildcard gets what the group sees");
        }
        stream.ack(&response).await;
    }
    app.post(&format!("{BASE}/clusters"), &cluster("unrelated"))
        .await;
    stream.quiet().await;

    app.put(&format!("{BASE}/routes/r"), &route("r", "c1"), &[])
        .await;
    let clusters = stream.next().await;
    assert_eq!(clusters.type_url, CDS);
    let added: Vec<&str> = clusters.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(added, ["c1"], "only what changed");
    assert!(
        clusters.removed_resources.is_empty(),
        "c2 stays while the old route may use it"
    );
    let routes = stream.next().await;
    assert_eq!(routes.type_url, RDS);
    stream.ack(&clusters).await;
    stream.quiet().await;
    stream.ack(&routes).await;
    let removal = stream.next().await;
    assert_eq!(removal.type_url, CDS);
    assert!(removal.resources.is_empty());
    assert_eq!(removal.removed_resources, ["c2"]);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn delta_a_reconnect_with_current_versions_gets_nothing_new(pool: PgPool) {
    let app = configured(pool).await;
    let mut stream = Delta::open(&app).await;
    stream.send(subscribe(CDS, &[])).await;
    let first = stream.next().await;
    stream.ack(&first).await;
    let held = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(stream);

    let mut again = Delta::open(&app).await;
    again
        .send(DeltaDiscoveryRequest {
            initial_resource_versions: held,
            ..subscribe(CDS, &[])
        })
        .await;
    let answer = again.next().await;
    assert!(answer.resources.is_empty() && answer.removed_resources.is_empty());
    assert_eq!(answer.system_version_info, first.system_version_info);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn the_cluster_service_serves_clusters_and_refuses_other_types(pool: PgPool) {
    let app = configured(pool).await;
    let connect = || async {
        ClusterDiscoveryServiceClient::connect(format!("http://{}", app.grpc))
            .await
            .unwrap()
    };
    let request = |type_url: &str| DiscoveryRequest {
        node: Some(node()),
        type_url: type_url.to_owned(),
        ..DiscoveryRequest::default()
    };
    let mut client = connect().await;
    let mut responses = client
        .stream_clusters(authorized(&app, tokio_stream::iter(vec![request(CDS)])))
        .await
        .unwrap()
        .into_inner();
    let answer = responses.message().await.unwrap().unwrap();
    assert_eq!(cluster_names(&answer), ["c2"]);

    let mut client = connect().await;
    let mut responses = client
        .stream_clusters(authorized(&app, tokio_stream::iter(vec![request(LDS)])))
        .await
        .unwrap()
        .into_inner();
    let refused = responses.message().await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn sds_serves_a_referenced_secret_with_its_private_key_to_the_tenants_proxies(pool: PgPool) {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
    let app = configured(pool).await;
    for (collection, fixture) in [
        ("secrets", "secret_tls_certificate"),
        ("clusters", "cluster_tls_sds"),
    ] {
        let answer = app
            .post(
                &format!("{BASE}/{collection}"),
                &efms_tests::fixture(fixture),
            )
            .await;
        assert_eq!(answer.status, 201, "{}", answer.body);
    }
    app.put(
        &format!("{BASE}/groups/g"),
        &json!({ "name": "g", "resources": [
            { "kind": "listener", "name": "l" }, { "kind": "cluster", "name": "service_b" } ] }),
        &[],
    )
    .await;
    let read = app.get(&format!("{BASE}/secrets/client_cert")).await;
    assert!(
        !read.body.to_string().contains("PRIVATE KEY"),
        "the API never shows private keys"
    );

    let mut stream = Sotw::open(&app).await;
    stream
        .send(
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            &["client_cert"],
            None,
        )
        .await;
    let answer = stream.next().await;
    let secret = Secret::decode(answer.resources[0].value.as_slice()).unwrap();
    assert_eq!(secret.name, "client_cert");
    let debug = format!("{secret:?}");
    assert!(
        debug.contains("BEGIN PRIVATE KEY"),
        "Envoy gets the key it needs"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn streams_opened_while_commits_land_never_get_an_empty_configuration(pool: PgPool) {
    let app = configured(pool).await;
    let writes = async {
        for i in 0..40 {
            let answer = app
                .post(&format!("{BASE}/clusters"), &cluster(&format!("x{i}")))
                .await;
            assert_eq!(answer.status, 201);
        }
    };
    let opens = async {
        for _ in 0..40 {
            let mut stream = Sotw::open(&app).await;
            stream.send(CDS, &[], None).await;
            let clusters = stream.next().await;
            assert_eq!(
                cluster_names(&clusters),
                ["c2"],
                "never an empty or partial set"
            );
        }
    };
    tokio::join!(writes, opens);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn sotw_a_route_subscription_dropped_by_the_proxy_does_not_hold_removals(pool: PgPool) {
    let app = configured(pool).await;
    let mut stream = Sotw::synced(&app).await;
    // The group now attaches one cluster: listener l, route r and cluster c2 leave.
    app.put(
        &format!("{BASE}/groups/g"),
        &json!({ "name": "g", "resources": [{ "kind": "cluster", "name": "c1" }] }),
        &[],
    )
    .await;
    let clusters = stream.next().await;
    assert_eq!(
        cluster_names(&clusters),
        ["c1", "c2"],
        "held while routes are pending"
    );
    let listeners = stream.next().await;
    assert_eq!(listeners.type_url, LDS);
    let routes = stream.next().await;
    assert_eq!(routes.type_url, RDS);
    stream.send(CDS, &[], Some(&clusters)).await;
    stream.send(LDS, &[], Some(&listeners)).await;
    // As Envoy does once no listener uses RDS: it stops following routes, without an ACK.
    stream.send(RDS, &[], Some(&routes)).await;
    let clusters = stream.next().await;
    assert_eq!(
        clusters.type_url, CDS,
        "no response to a dropped subscription"
    );
    assert_eq!(
        cluster_names(&clusters),
        ["c1"],
        "the removal is not held forever"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_proxy_of_a_group_that_does_not_exist_gets_nothing_until_it_does(pool: PgPool) {
    let app = configured(pool).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", app.grpc))
        .await
        .unwrap();
    let (requests, outbound) = mpsc::channel(4);
    let mut node = node();
    node.metadata = Some(Struct {
        fields: [(
            "group".to_owned(),
            ProtoValue {
                kind: Some(Kind::StringValue("later".to_owned())),
            },
        )]
        .into(),
    });
    requests
        .send(DiscoveryRequest {
            node: Some(node),
            type_url: CDS.to_owned(),
            ..DiscoveryRequest::default()
        })
        .await
        .unwrap();
    let mut responses = client
        .stream_aggregated_resources(authorized(&app, ReceiverStream::new(outbound)))
        .await
        .unwrap()
        .into_inner();
    assert!(
        tokio::time::timeout(QUIET, responses.message())
            .await
            .is_err(),
        "no empty configuration for a missing group"
    );
    app.post(
        &format!("{BASE}/groups"),
        &json!({ "name": "later", "resources": [{ "kind": "cluster", "name": "c1" }] }),
    )
    .await;
    let answer = tokio::time::timeout(WAIT, responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(cluster_names(&answer), ["c1"]);
    drop(requests);
}

/// The proxy `probe-1` as the API shows it.
async fn connected(app: &TestApp) -> Value {
    app.get(&format!("{BASE}/proxies/probe-1")).await.body
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_proxy_that_moved_to_another_replica_stays_connected_when_the_old_stream_ends(
    pool: PgPool,
) {
    let first = configured(pool.clone()).await;
    let second = TestApp::spawn(pool).await;
    let mut old = Sotw::open(&first).await;
    old.send(CDS, &[], None).await;
    old.next().await;
    let mut new = Sotw::open(&second).await;
    new.send(CDS, &[], None).await;
    new.next().await;
    drop(old);
    efms_tests::fleet::eventually(WAIT, "the old stream's end to be recorded", || async {
        let proxy = connected(&first).await;
        (proxy["connected"] == true && proxy["last_seen_at"] != proxy["connected_at"]).then_some(())
    })
    .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        connected(&second).await["connected"],
        true,
        "the stream on the other replica is open"
    );
    drop(new);
    efms_tests::fleet::eventually(WAIT, "the proxy to be disconnected", || async {
        (connected(&first).await["connected"] == false).then_some(())
    })
    .await;
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn delta_a_name_that_does_not_exist_is_reported_removed_once(pool: PgPool) {
    let app = configured(pool).await;
    let mut stream = Delta::open(&app).await;
    stream.send(subscribe(RDS, &["r", "ghost"])).await;
    let routes = stream.next().await;
    let names: Vec<&str> = routes.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["r"]);
    assert_eq!(
        routes.removed_resources,
        ["ghost"],
        "Envoy need not wait for it"
    );
    stream.ack(&routes).await;
    stream.quiet().await;
    app.post(&format!("{BASE}/routes"), &route("ghost", "c1"))
        .await;
    app.put(
        &format!("{BASE}/groups/g"),
        &json!({ "name": "g", "resources": [
            { "kind": "listener", "name": "l" }, { "kind": "route", "name": "ghost" } ] }),
        &[],
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let response = stream.next().await;
        if response.type_url == RDS {
            seen.extend(response.resources.iter().map(|r| r.name.clone()));
        }
        stream.ack(&response).await;
        if !seen.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ["ghost"], "once it exists, it is sent");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn delta_a_refusal_after_an_unsubscribe_does_not_bring_the_name_back(pool: PgPool) {
    let app = configured(pool).await;
    app.post(&format!("{BASE}/routes"), &route("r2", "c1"))
        .await;
    let attached = app
        .put(
            &format!("{BASE}/groups/g"),
            &json!({ "name": "g", "resources": [
                { "kind": "listener", "name": "l" }, { "kind": "route", "name": "r2" } ] }),
            &[],
        )
        .await;
    assert_eq!(attached.status, 200, "{}", attached.body);
    let mut stream = Delta::open(&app).await;
    stream.send(subscribe(RDS, &["r", "r2"])).await;
    let routes = stream.next().await;
    let mut names: Vec<&str> = routes.resources.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["r", "r2"]);
    // The proxy stops following r2, then refuses the response that carried it.
    stream
        .send(DeltaDiscoveryRequest {
            type_url: RDS.to_owned(),
            resource_names_unsubscribe: vec!["r2".to_owned()],
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    stream
        .send(DeltaDiscoveryRequest {
            type_url: RDS.to_owned(),
            response_nonce: routes.nonce.clone(),
            error_detail: Some(envoy_types::pb::google::rpc::Status {
                code: 3,
                message: "refused".to_owned(),
                details: Vec::new(),
            }),
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    stream.quiet().await;
    // The next change of what it follows is sent; nothing of r2 comes with it.
    app.put(&format!("{BASE}/routes/r"), &route("r", "c1"), &[])
        .await;
    let again = stream.next().await;
    assert_eq!(again.type_url, RDS);
    let names: Vec<&str> = again.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["r"]);
    assert!(
        again.removed_resources.is_empty(),
        "r2 is not followed any more, so not removed either: {:?}",
        again.removed_resources
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_commit_larger_than_a_projector_batch_reaches_proxies_whole(pool: PgPool) {
    let app = configured(pool).await;
    let mut stream = Sotw::synced(&app).await;
    // The route moves to a cluster created by the same commit, 600 changes later: a reader that
    // saw the first 500 events alone would send the route without its cluster.
    let mut operations =
        vec![json!({ "op": "replace", "kind": "routes", "resource": route("r", "big599") })];
    operations.extend((0..600).map(
        |i| json!({ "op": "create", "kind": "clusters", "resource": cluster(&format!("big{i}")) }),
    ));
    let answer = app
        .post(
            &format!("{BASE}/bulk"),
            &json!({ "operations": operations }),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mut clusters_known: Vec<String> = Vec::new();
    loop {
        let response = stream.next().await;
        let names: &[&str] = if response.type_url == RDS {
            &["r"]
        } else {
            &[]
        };
        stream
            .send(&response.type_url.clone(), names, Some(&response))
            .await;
        if response.type_url == CDS {
            clusters_known = cluster_names(&response);
        } else if response.type_url == RDS {
            let route = RouteConfiguration::decode(response.resources[0].value.as_slice()).unwrap();
            if format!("{route:?}").contains("big599") {
                assert!(
                    clusters_known.iter().any(|name| name == "big599"),
                    "the route came with its cluster"
                );
                break;
            }
        }
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_proxy_over_the_proxies_quota_is_refused_its_stream_and_bootstrap(pool: PgPool) {
    let app = configured(pool).await;
    let set = app
        .put(&format!("{BASE}/quotas"), &json!({ "proxies": 1 }), &[])
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    let mut first = Sotw::open_as(&app, "probe-1").await;
    first.send(CDS, &[], None).await;
    first.next().await;
    efms_tests::fleet::eventually(WAIT, "the first proxy to be recorded", || async {
        (connected(&app).await["connected"] == true).then_some(())
    })
    .await;

    let mut second = Sotw::open_as(&app, "probe-2").await;
    second.send(CDS, &[], None).await;
    let refused = tokio::time::timeout(WAIT, second.responses.message())
        .await
        .expect("an answer in time")
        .expect_err("the stream is refused");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("quota `proxies` (1)"),
        "{refused:?}"
    );
    let bootstrap = |node: &str| {
        let path = format!("{BASE}/groups/g/bootstrap?node_id={node}");
        let app = &app;
        async move { app.get(&path).await }
    };
    let over = bootstrap("probe-2").await;
    assert_eq!(over.status, 403, "{}", over.body);
    assert!(
        over.body["detail"]
            .as_str()
            .unwrap()
            .contains("quota `proxies`"),
        "{}",
        over.body
    );
    assert_eq!(
        bootstrap("probe-1").await.status,
        200,
        "a connected proxy may come back"
    );
    let quotas = app.get(&format!("{BASE}/quotas")).await.body;
    assert_eq!(quotas["limits"]["proxies"], 1, "{quotas}");
    assert_eq!(quotas["usage"]["proxies_connected"], 1, "{quotas}");
    // The first one reconnects (it is counted already); once it leaves, the second gets in.
    let mut again = Sotw::open_as(&app, "probe-1").await;
    again.send(CDS, &[], None).await;
    again.next().await;
    drop((first, again));
    efms_tests::fleet::eventually(WAIT, "the first proxy to be disconnected", || async {
        (connected(&app).await["connected"] == false).then_some(())
    })
    .await;
    let mut third = Sotw::open_as(&app, "probe-2").await;
    third.send(CDS, &[], None).await;
    third.next().await;
}
