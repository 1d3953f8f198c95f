//! Who may stream configuration, and for how long (NFR-SE-001): a deleted or changed service
//! account's token opens no ADS stream and ends the open ones, a stream ends when its token
//! expires, and a bootstrap's proxy token streams its own group only and can be revoked.

use std::time::Duration;

use efms_domain::{Role, TenantSlug};
use efms_tests::TestApp;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value as ProtoValue};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

const BASE: &str = "/api/v1/tenants/acme";
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// A generous deadline: a withdrawn token's stream ends within the re-check interval.
const WAIT: Duration = Duration::from_secs(15);

/// Tenant `acme` with the (empty) groups `g` and `h`.
async fn acme(pool: PgPool) -> TestApp {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    for group in ["g", "h"] {
        let answer = app
            .post(&format!("{BASE}/groups"), &json!({ "name": group }))
            .await;
        assert_eq!(answer.status, 201, "{}", answer.body);
    }
    app
}

/// An open ADS stream and the requests it sends.
struct Stream {
    _requests: mpsc::Sender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
}

impl Stream {
    /// Opens a stream with `token` as node `node_id` of `group` and waits for the first answer
    /// (clusters): the stream, or the status that refused it.
    async fn open(app: &TestApp, token: &str, node_id: &str, group: &str) -> Result<Self, Status> {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", app.grpc))
            .await
            .unwrap();
        let (requests, outbound) = mpsc::channel(4);
        let node = Node {
            id: node_id.to_owned(),
            metadata: Some(Struct {
                fields: [(
                    "group".to_owned(),
                    ProtoValue {
                        kind: Some(Kind::StringValue(group.to_owned())),
                    },
                )]
                .into(),
            }),
            ..Node::default()
        };
        requests
            .send(DiscoveryRequest {
                node: Some(node),
                type_url: CDS.to_owned(),
                ..DiscoveryRequest::default()
            })
            .await
            .unwrap();
        let mut request = tonic::Request::new(ReceiverStream::new(outbound));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut responses = client
            .stream_aggregated_resources(request)
            .await?
            .into_inner();
        let first = tokio::time::timeout(WAIT, responses.message())
            .await
            .expect("an answer in time")?;
        let first = first.ok_or_else(|| Status::unknown("the stream ended without an answer"))?;
        assert_eq!(first.type_url, CDS);
        Ok(Self {
            _requests: requests,
            responses,
        })
    }

    /// The status the server ends the stream with (the test fails if it stays open).
    async fn ended(mut self) -> Status {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.responses.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Status::ok("the stream ended without a status"),
                    Err(status) => return status,
                }
            }
        })
        .await
        .expect("the server ends the stream in time")
    }
}

/// Creates the service account `name` with `role` as an admin: its id and token.
async fn service_account(app: &TestApp, name: &str, role: &str) -> (String, String) {
    let answer = app
        .post(
            &format!("{BASE}/users"),
            &json!({ "username": name, "role": role, "service": true }),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    (
        answer.body["id"].as_str().unwrap().to_owned(),
        answer.body["token"].as_str().unwrap().to_owned(),
    )
}

/// Sends `method path` with an optional JSON body as the tenant's admin.
async fn as_admin(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app
        .client
        .request(method, app.url(path))
        .bearer_auth(app.token(Role::Admin, Some("acme")));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The proxy token of a bootstrap of `group` for `node_id`.
async fn bootstrap_token(app: &TestApp, group: &str, node_id: &str) -> String {
    let answer = app
        .get(&format!(
            "{BASE}/groups/{group}/bootstrap?node_id={node_id}"
        ))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let header = answer.body["dynamic_resources"]["ads_config"]["grpc_services"][0]
        ["initial_metadata"][0]["value"]
        .as_str()
        .unwrap();
    header.strip_prefix("Bearer ").unwrap().to_owned()
}

/// The claims of a token, unverified.
fn claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn refused(result: Result<Stream, Status>) -> Status {
    match result {
        Ok(_) => panic!("the stream was accepted"),
        Err(status) => status,
    }
}

/// Deletes the user `id` as the tenant's admin.
async fn delete_user(app: &TestApp, id: &str) {
    let (status, _) = as_admin(
        app,
        reqwest::Method::DELETE,
        &format!("{BASE}/users/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_deleted_service_accounts_token_opens_no_ads_stream(pool: PgPool) {
    let app = acme(pool).await;
    let (id, token) = service_account(&app, "deployer", "operator").await;
    Stream::open(&app, &token, "edge-1", "g")
        .await
        .expect("the account's token streams while it exists");
    delete_user(&app, &id).await;
    let status = refused(Stream::open(&app, &token, "edge-1", "g").await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("deleted"), "{status:?}");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn an_open_stream_ends_once_its_service_account_is_deleted(pool: PgPool) {
    let app = acme(pool).await;
    let (id, token) = service_account(&app, "deployer", "operator").await;
    let (_, other) = service_account(&app, "other", "operator").await;
    let stream = Stream::open(&app, &token, "edge-1", "g").await.unwrap();
    let bystander = Stream::open(&app, &other, "edge-2", "g").await.unwrap();
    delete_user(&app, &id).await;
    let ended = stream.ended().await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("deleted"), "{ended:?}");
    // Another account's stream goes on: it ends only when the test stops the server.
    let mut bystander = bystander;
    assert!(
        tokio::time::timeout(efms_tests::RECHECK * 5, bystander.responses.message())
            .await
            .is_err(),
        "another account's stream stays open and quiet"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn an_open_stream_ends_once_its_service_accounts_role_changes(pool: PgPool) {
    let app = acme(pool).await;
    let (id, token) = service_account(&app, "deployer", "operator").await;
    let stream = Stream::open(&app, &token, "edge-1", "g").await.unwrap();
    let (status, body) = as_admin(
        &app,
        reqwest::Method::PATCH,
        &format!("{BASE}/users/{id}"),
        Some(json!({ "role": "viewer" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let ended = stream.ended().await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(
        ended.message().contains("role or password changed"),
        "{ended:?}"
    );
    let status = refused(Stream::open(&app, &token, "edge-1", "g").await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_stream_ends_when_its_token_expires(pool: PgPool) {
    let app = acme(pool).await;
    let acme = TenantSlug::parse("acme").unwrap();
    let token = app
        .keys
        .issue(
            "short-lived",
            Role::Proxy,
            Some(&acme),
            Duration::from_secs(3),
        )
        .unwrap();
    let stream = Stream::open(&app, &token, "edge-1", "g").await.unwrap();
    let ended = stream.ended().await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("expired"), "{ended:?}");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_proxy_token_bound_to_one_group_cannot_stream_as_another(pool: PgPool) {
    let app = acme(pool).await;
    let token = bootstrap_token(&app, "g", "edge-1").await;
    assert_eq!(claims(&token)["group"], "g");
    let status = refused(Stream::open(&app, &token, "edge-1", "h").await);
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("group `g`") && status.message().contains("group `h`"),
        "{status:?}"
    );
    Stream::open(&app, &token, "edge-1", "g")
        .await
        .expect("the token streams its own group");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_revoked_proxy_tokens_stream_ends_and_a_new_one_is_refused(pool: PgPool) {
    let app = acme(pool).await;
    let token = bootstrap_token(&app, "g", "edge-1").await;
    let kept = bootstrap_token(&app, "g", "edge-2").await;
    let id = claims(&token)["jti"].as_str().unwrap().to_owned();

    let (status, listed) = as_admin(
        &app,
        reqwest::Method::GET,
        &format!("{BASE}/proxy-tokens"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{listed}");
    let entry = items.iter().find(|item| item["id"] == id.as_str()).unwrap();
    assert_eq!(entry["group"], "g");
    assert_eq!(entry["node_id"], "edge-1");
    assert_eq!(entry["state"], "active");

    let stream = Stream::open(&app, &token, "edge-1", "g").await.unwrap();
    let other = Stream::open(&app, &kept, "edge-2", "g").await.unwrap();
    let (status, body) = as_admin(
        &app,
        reqwest::Method::DELETE,
        &format!("{BASE}/proxy-tokens/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let ended = stream.ended().await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("revoked"), "{ended:?}");
    let status = refused(Stream::open(&app, &token, "edge-1", "g").await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let (_, listed) = as_admin(
        &app,
        reqwest::Method::GET,
        &format!("{BASE}/proxy-tokens?group=g"),
        None,
    )
    .await;
    let entry = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["state"], "revoked", "{entry}");
    assert!(
        entry["revoked_by"].as_str().unwrap().contains("admin"),
        "{entry}"
    );
    // The other proxy's token was not revoked.
    let mut other = other;
    assert!(
        tokio::time::timeout(efms_tests::RECHECK * 5, other.responses.message())
            .await
            .is_err(),
        "the other proxy's stream stays open"
    );
    let (status, _) = as_admin(
        &app,
        reqwest::Method::DELETE,
        &format!("{BASE}/proxy-tokens/0190d1c6-0000-7000-8000-000000000000"),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_bootstraps_token_lives_thirty_days_unless_asked_and_never_past_the_maximum(
    pool: PgPool,
) {
    let app = acme(pool).await;
    let token = bootstrap_token(&app, "g", "edge-1").await;
    let claims = claims(&token);
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 30 * 86_400, "{claims}");
    let answer = app
        .get(&format!(
            "{BASE}/groups/g/bootstrap?node_id=edge-1&token_ttl=366d"
        ))
        .await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert_eq!(
        answer.body["errors"][0]["parameter"], "token_ttl",
        "{}",
        answer.body
    );
    assert!(
        answer.body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("365d"),
        "{}",
        answer.body
    );
    let answer = app
        .get(&format!(
            "{BASE}/groups/g/bootstrap?node_id=edge-1&token_ttl=7d"
        ))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_revocation_on_one_replica_ends_the_stream_on_another(pool: PgPool) {
    let first = acme(pool.clone()).await;
    let second = TestApp::spawn(pool).await;
    let token = bootstrap_token(&first, "g", "edge-1").await;
    let (id, account) = service_account(&first, "deployer", "operator").await;
    let proxy = Stream::open(&second, &token, "edge-1", "g").await.unwrap();
    let deployer = Stream::open(&second, &account, "edge-2", "g")
        .await
        .unwrap();
    let jti = claims(&token)["jti"].as_str().unwrap().to_owned();
    let (status, _) = as_admin(
        &first,
        reqwest::Method::DELETE,
        &format!("{BASE}/proxy-tokens/{jti}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    delete_user(&first, &id).await;
    // The second replica learns of both at its next check.
    let ended = proxy.ended().await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("revoked"), "{ended:?}");
    let ended = deployer.ended().await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("deleted"), "{ended:?}");
}
