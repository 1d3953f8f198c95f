//! Tokens of an external identity provider (NFR-SE-002): accepted when signed by a key of its JWK
//! set (ES256 here) with the configured issuer and audience, refused otherwise.

use std::sync::Arc;

use efms_api::auth::ExternalIssuer;
use efms_api::jwks::{PlainHttp, MAX_JWKS_BYTES};
use efms_tests::TestApp;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sqlx::PgPool;

/// A fresh P-256 key made with `openssl`: the signing key (PKCS#8 DER) and its public JWK.
fn ec_key(kid: &str) -> (EncodingKey, Value) {
    let dir = std::env::temp_dir().join(format!("efms-oidc-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("openssl runs");
        assert!(output.status.success(), "openssl {args:?}");
    };
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "ec.pem",
    ]);
    run(&[
        "pkcs8", "-topk8", "-nocrypt", "-in", "ec.pem", "-outform", "DER", "-out", "key.der",
    ]);
    run(&[
        "ec", "-in", "ec.pem", "-pubout", "-outform", "DER", "-out", "pub.der",
    ]);
    let private = std::fs::read(dir.join("key.der")).unwrap();
    let public = std::fs::read(dir.join("pub.der")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    // The public key ends with the uncompressed point: x and y, 32 bytes each.
    let (x, y) = public[public.len() - 64..].split_at(32);
    let b64 = |bytes: &[u8]| {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        URL_SAFE_NO_PAD.encode(bytes)
    };
    let jwk = json!({ "kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y), "alg": "ES256", "use": "sig", "kid": kid });
    (EncodingKey::from_ec_der(&private), jwk)
}

fn token(key: &EncodingKey, kid: &str, changes: &Value) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "sub": "dana@idp.example", "role": "operator", "tenant": "acme",
        "iss": "https://idp.example", "aud": "efms-api", "iat": now, "exp": now + 600,
    });
    for (name, value) in changes.as_object().unwrap() {
        claims[name] = value.clone();
    }
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn an_identity_providers_token_is_accepted_only_with_its_key_issuer_and_audience(
    pool: PgPool,
) {
    let (key, jwk) = ec_key("k1");
    let jwks = json!({ "keys": [jwk] }).to_string();
    let issuer = ExternalIssuer::from_jwks(&jwks, "https://idp.example", "efms-api").unwrap();
    let app = TestApp::spawn_with_issuer(pool, Arc::new(issuer)).await;
    app.create_tenant("acme", "Acme").await;
    let status = |token: String| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/api/v1/tenants/acme/clusters"))
                .bearer_auth(token)
                .json(&json!({ "name": format!("c{}", uuid::Uuid::new_v4().simple()), "type": "STATIC", "connect_timeout": "1s" }))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(token(&key, "k1", &json!({}))).await, 201);
    assert_eq!(
        status(token(&key, "k1", &json!({ "role": "viewer" }))).await,
        403
    );
    let refused = [
        (
            "another audience",
            token(&key, "k1", &json!({ "aud": "elsewhere" })),
        ),
        (
            "another issuer",
            token(&key, "k1", &json!({ "iss": "https://evil.example" })),
        ),
        ("expired", token(&key, "k1", &json!({ "exp": 1_000_000 }))),
        ("another key", token(&ec_key("k1").0, "k1", &json!({}))),
        (
            "a system role",
            token(&key, "k1", &json!({ "role": "system", "tenant": null })),
        ),
    ];
    for (case, token) in refused {
        assert_eq!(status(token).await, 401, "{case}");
    }
    // The installation's own tokens still work beside the provider's.
    assert_eq!(
        status(app.token(efms_domain::Role::Operator, Some("acme"))).await,
        201
    );
}

#[test]
fn a_jwk_set_without_usable_public_keys_is_refused() {
    assert!(ExternalIssuer::from_jwks("{\"keys\": []}", "i", "a").is_err());
    assert!(ExternalIssuer::from_jwks("not json", "i", "a").is_err());
    let hmac = r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]}"#;
    assert!(ExternalIssuer::from_jwks(hmac, "i", "a").is_err());
}

/// A JWK set served over HTTP on 127.0.0.1, whose content the test changes; counts its fetches.
struct JwksServer {
    url: String,
    jwks: Arc<std::sync::Mutex<String>>,
    fetches: Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    async fn start(jwks: String) -> Self {
        let jwks = Arc::new(std::sync::Mutex::new(jwks));
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let router = axum::Router::new()
            .route(
                "/.well-known/jwks.json",
                axum::routing::get({
                    let jwks = jwks.clone();
                    let fetches = fetches.clone();
                    move || {
                        fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let body = jwks.lock().unwrap().clone();
                        async move { ([("content-type", "application/json")], body) }
                    }
                }),
            )
            .route(
                "/moved",
                axum::routing::get(|| async {
                    (
                        axum::http::StatusCode::FOUND,
                        [("location", "/.well-known/jwks.json")],
                    )
                }),
            )
            .route(
                "/huge.json",
                axum::routing::get({
                    let jwks = jwks.clone();
                    move || {
                        // A valid set, padded with whitespace past the limit.
                        let body =
                            format!("{}{}", jwks.lock().unwrap(), " ".repeat(MAX_JWKS_BYTES));
                        async move { ([("content-type", "application/json")], body) }
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { url, jwks, fetches }
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_jwk_set_from_a_url_is_fetched_and_a_rotated_key_is_accepted_once_published(
    pool: PgPool,
) {
    let (old_key, old_jwk) = ec_key("k1");
    let (new_key, new_jwk) = ec_key("k2");
    let server = JwksServer::start(json!({ "keys": [old_jwk.clone()] }).to_string()).await;
    let interval = std::time::Duration::from_secs(2);
    // The test's provider serves its keys over plain http, which a setting allows.
    let issuer = ExternalIssuer::from_url(
        &server.url,
        "https://idp.example",
        "efms-api",
        PlainHttp::Allowed,
    )
    .unwrap()
    .with_min_refetch_interval(interval);
    let app = TestApp::spawn_with_issuer(pool, Arc::new(issuer)).await;
    app.create_tenant("acme", "Acme").await;
    let status = |token: String| {
        let app = &app;
        async move {
            app.client
                .get(app.url("/api/v1/tenants/acme/clusters"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let fetches = || server.fetches.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(status(token(&old_key, "k1", &json!({}))).await, 200);
    assert!(fetches() >= 1);

    // The provider publishes a new key beside the old one: a token naming it makes efms fetch
    // the set again, and it is accepted at once.
    *server.jwks.lock().unwrap() = json!({ "keys": [old_jwk, new_jwk.clone()] }).to_string();
    tokio::time::sleep(interval).await;
    let before = fetches();
    assert_eq!(status(token(&new_key, "k2", &json!({}))).await, 200);
    assert_eq!(fetches(), before + 1);
    // Unknown keys do not make it fetch on every request.
    let unknown = token(&ec_key("k3").0, "k3", &json!({}));
    assert_eq!(status(unknown.clone()).await, 401);
    assert_eq!(status(unknown.clone()).await, 401);
    assert_eq!(fetches(), before + 1, "no fetch within the interval");

    // The provider retires the old key: once fetched again, its tokens are refused.
    *server.jwks.lock().unwrap() = json!({ "keys": [new_jwk] }).to_string();
    tokio::time::sleep(interval).await;
    assert_eq!(status(unknown).await, 401);
    assert_eq!(status(token(&old_key, "k1", &json!({}))).await, 401);
    assert_eq!(status(token(&new_key, "k2", &json!({}))).await, 200);
}

#[test]
fn a_jwk_set_url_must_be_https_unless_plain_http_is_allowed() {
    let from_url = |url: &str, plain_http| ExternalIssuer::from_url(url, "i", "a", plain_http);
    assert!(from_url("file:///etc/jwks.json", PlainHttp::Allowed).is_err());
    assert!(from_url("not a url", PlainHttp::Refused).is_err());
    assert!(from_url("https://idp.example/jwks", PlainHttp::Refused).is_ok());
    let refused = from_url("http://idp.example/jwks", PlainHttp::Refused).unwrap_err();
    assert!(refused.contains("https"), "{refused}");
    assert!(from_url("http://idp.example/jwks", PlainHttp::Allowed).is_ok());
}

#[tokio::test]
async fn a_redirect_from_the_jwk_set_url_is_not_followed() {
    let (_, jwk) = ec_key("k1");
    let server = JwksServer::start(json!({ "keys": [jwk] }).to_string()).await;
    let moved = server.url.replace("/.well-known/jwks.json", "/moved");
    let issuer = ExternalIssuer::from_url(&moved, "i", "a", PlainHttp::Allowed).unwrap();
    let error = issuer.refresh().await.unwrap_err();
    assert!(error.contains("redirect"), "{error}");
    assert_eq!(
        server.fetches.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the target was never asked"
    );
    let direct = ExternalIssuer::from_url(&server.url, "i", "a", PlainHttp::Allowed).unwrap();
    assert_eq!(direct.refresh().await, Ok(1), "the set itself is fine");
}

#[tokio::test]
async fn a_jwk_set_larger_than_the_limit_is_refused() {
    let (_, jwk) = ec_key("k1");
    let server = JwksServer::start(json!({ "keys": [jwk] }).to_string()).await;
    let huge = server.url.replace("/.well-known/jwks.json", "/huge.json");
    let issuer = ExternalIssuer::from_url(&huge, "i", "a", PlainHttp::Allowed).unwrap();
    let error = issuer.refresh().await.unwrap_err();
    assert!(error.contains("larger than"), "{error}");
}
