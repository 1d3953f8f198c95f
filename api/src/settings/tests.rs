//! The serve settings' checks.

use super::*;

fn args(http: &str, secret: Option<&str>) -> ServeArgs {
    ServeArgs {
        database: DatabaseArgs {
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            database_password_file: None,
            db_max_connections: "20".to_owned(),
        },
        http_addr: http.to_owned(),
        grpc_addr: "127.0.0.1:18000".to_owned(),
        xds_advertise_addr: None,
        jwt_secret: secret.map(str::to_owned),
        jwt_secret_file: None,
        master_key: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned()),
        master_key_file: None,
        tls_cert: None,
        tls_key: None,
        oidc_jwks_file: None,
        oidc_jwks_url: None,
        oidc_issuer: None,
        oidc_audience: None,
        log_format: "json".to_owned(),
        poll_interval_ms: "250".to_owned(),
        proxy_token_ttl: "30d".to_owned(),
        proxy_token_max_ttl: "365d".to_owned(),
        xds_credential_recheck: "5s".to_owned(),
        edge: EdgeArgs {
            http_header_timeout: "10s".to_owned(),
            http_idle_timeout: "60s".to_owned(),
            http_max_connections: "1024".to_owned(),
            login_failures_per_address: "30".to_owned(),
            login_throttle_entries: "50000".to_owned(),
            oidc_jwks_allow_http: "false".to_owned(),
        },
        limits: crate::limits::LimitArgs::default(),
        tenant_purge_grace: "7d".to_owned(),
        settings_file: None,
        fleet: FleetArgs::default(),
        telemetry: TelemetryArgs::default(),
        replica: ReplicaArgs::default(),
        read_replica: ReadReplicaArgs::default(),
        webhooks: WebhookArgs::default(),
        alerts: AlertArgs::default(),
    }
}

const SECRET: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn defaults_with_a_secret_are_valid() {
    let config = args("127.0.0.1:8080", Some(SECRET)).validate().unwrap();
    assert_eq!(config.http_addr.port(), 8080);
}

#[test]
fn unparseable_address_names_its_setting() {
    let error = args("localhost-8080", Some(SECRET)).validate().unwrap_err();
    assert_eq!(error.setting, "EFMS_HTTP_ADDR (--http-addr)");
}

#[test]
fn missing_or_short_secret_names_its_setting() {
    assert_eq!(
        args("127.0.0.1:8080", None).validate().unwrap_err().setting,
        "EFMS_JWT_SECRET (--jwt-secret)"
    );
    assert_eq!(
        args("127.0.0.1:8080", Some("short"))
            .validate()
            .unwrap_err()
            .setting,
        "EFMS_JWT_SECRET (--jwt-secret)"
    );
}

#[test]
fn tls_needs_both_files_and_names_the_one_at_fault() {
    let mut serve = args("127.0.0.1:8080", Some(SECRET));
    serve.tls_cert = Some("/nonexistent/cert.pem".to_owned());
    assert_eq!(
        serve.validate().unwrap_err().setting,
        "EFMS_TLS_KEY (--tls-key)"
    );
    serve.tls_key = Some("/nonexistent/key.pem".to_owned());
    assert_eq!(
        serve.validate().unwrap_err().setting,
        "EFMS_TLS_CERT (--tls-cert)"
    );
}

#[test]
fn a_missing_or_malformed_master_key_names_its_setting() {
    let mut serve = args("127.0.0.1:8080", Some(SECRET));
    serve.master_key = None;
    assert_eq!(
        serve.validate().unwrap_err().setting,
        "EFMS_MASTER_KEY (--master-key)"
    );
    serve.master_key = Some("c2hvcnQ=".to_owned());
    assert_eq!(
        serve.validate().unwrap_err().setting,
        "EFMS_MASTER_KEY (--master-key)"
    );
}

#[test]
fn an_identity_provider_needs_one_key_source_an_issuer_and_an_audience() {
    let mut serve = args("127.0.0.1:8080", Some(SECRET));
    serve.oidc_jwks_url = Some("https://idp.example/jwks.json".to_owned());
    assert_eq!(
        serve.validate().unwrap_err().setting,
        "EFMS_OIDC_ISSUER (--oidc-issuer)"
    );
    serve.oidc_issuer = Some("https://idp.example".to_owned());
    serve.oidc_audience = Some("efms".to_owned());
    assert!(serve.validate().unwrap().oidc.is_some());
    serve.oidc_jwks_file = Some("/nonexistent/jwks.json".to_owned());
    assert_eq!(
        serve.validate().unwrap_err().setting,
        "EFMS_OIDC_JWKS_URL (--oidc-jwks-url)",
        "not both"
    );
    serve.oidc_jwks_file = None;
    serve.oidc_jwks_url = Some("ftp://idp.example/jwks.json".to_owned());
    assert_eq!(
        serve.validate().unwrap_err().setting,
        "EFMS_OIDC_JWKS_URL (--oidc-jwks-url)"
    );
    serve.oidc_jwks_url = Some("http://idp.example/jwks.json".to_owned());
    assert_eq!(
        serve.validate().unwrap_err().setting,
        "EFMS_OIDC_JWKS_URL (--oidc-jwks-url)",
        "plain http only when allowed"
    );
    serve.edge.oidc_jwks_allow_http = "true".to_owned();
    assert!(serve.validate().is_ok());
}

#[test]
fn the_database_password_comes_from_its_file_unless_the_url_holds_one() {
    let path = std::env::temp_dir().join(format!("efms-db-password-{}", std::process::id()));
    std::fs::write(&path, "s3cret\n").unwrap();
    let mut database = DatabaseArgs {
        database_url: "postgres://efms@db:5432/efms".to_owned(),
        database_password_file: Some(path.to_str().unwrap().to_owned()),
        db_max_connections: "20".to_owned(),
    };
    let options = database.validate().unwrap().options;
    assert_eq!(options.get_host(), "db");
    assert_eq!(format!("{options:?}").matches("s3cret").count(), 1);
    database.database_url = "postgres://efms:other@db:5432/efms".to_owned();
    let both = database.validate().unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        both.setting,
        "EFMS_DATABASE_PASSWORD_FILE (--database-password-file)"
    );
}
