//! Hot reload (DPL-CM-002) of a real `efms serve`, once its files change or it gets SIGHUP: a new
//! TLS certificate reaches new connections, a new settings file sets the log filter, and a bad
//! certificate or settings file is refused with a log line, keeping what is in use.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use efms_tests::certificates::issued;
use efms_tests::fleet::eventually;
use efms_tests::replica::ServeProcess;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use sqlx::PgPool;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

const PATIENCE: Duration = Duration::from_secs(30);

/// The certificates of a PEM chain.
fn certificates(chain: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(chain.as_bytes())
        .map(Result::unwrap)
        .collect()
}

/// The certificate the server at `base` (`https://127.0.0.1:PORT`) presents to a new
/// connection, trusting the CAs of `chains`.
async fn served(base: &str, chains: &[&str]) -> Option<CertificateDer<'static>> {
    let mut roots = RootCertStore::empty();
    for chain in chains {
        roots.add(certificates(chain).last()?.clone()).ok()?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .ok()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let addr: std::net::SocketAddr = base.trim_start_matches("https://").parse().ok()?;
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let stream = TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .ok()?;
    stream.get_ref().1.peer_certificates()?.first().cloned()
}

fn write(dir: &Path, (chain, key): (&str, &str)) {
    std::fs::write(dir.join("cert.pem"), chain).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_new_certificate_reaches_new_connections_and_a_bad_one_is_refused_keeping_the_old(
    pool: PgPool,
) {
    let dir = std::env::temp_dir().join(format!("efms-tls-reload-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (first, first_key) = issued();
    let (second, second_key) = issued();
    let (third, third_key) = issued();
    write(&dir, (&first, &first_key));
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let replica = ServeProcess::start_with(
        &pool,
        "15s",
        &[("EFMS_TLS_CERT", &cert), ("EFMS_TLS_KEY", &key)],
    )
    .await;
    let all = [first.as_str(), second.as_str(), third.as_str()];
    assert_eq!(
        served(&replica.base, &all).await,
        Some(certificates(&first)[0].clone())
    );

    // New files: new connections get the new certificate.
    write(&dir, (&second, &second_key));
    eventually(PATIENCE, "the second certificate served", || async {
        (served(&replica.base, &all).await? == certificates(&second)[0]).then_some(())
    })
    .await;

    // A certificate with another's key is refused, with a log line; the second stays. (A pair
    // read between the writes of its two files was refused the same way: count from here.)
    let refusals = || {
        replica
            .log()
            .matches("the new TLS certificate or key is refused")
            .count()
    };
    let before = refusals();
    write(&dir, (&third, &first_key));
    replica.signal("HUP");
    eventually(PATIENCE, "the refusal logged", || async {
        (refusals() > before).then_some(())
    })
    .await;
    assert_eq!(
        served(&replica.base, &all).await,
        Some(certificates(&second)[0].clone()),
        "the certificate in use stays"
    );

    // SIGHUP reads the files again: the third with its own key is served.
    write(&dir, (&third, &third_key));
    replica.signal("HUP");
    eventually(PATIENCE, "the third certificate served", || async {
        (served(&replica.base, &all).await? == certificates(&third)[0]).then_some(())
    })
    .await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn the_settings_file_sets_the_log_filter_and_a_bad_one_is_refused_keeping_it(pool: PgPool) {
    let dir = std::env::temp_dir().join(format!("efms-settings-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("settings.json");
    std::fs::write(&file, r#"{"log": "warn"}"#).unwrap();
    let path = file.display().to_string();
    let replica = ServeProcess::start_with(&pool, "15s", &[("EFMS_SETTINGS_FILE", &path)]).await;
    // Read at start, over EFMS_LOG=info: the start's info lines are filtered out.
    assert!(
        !replica.log().contains("efms is serving"),
        "{}",
        replica.log()
    );

    let applied = || replica.log().matches("settings file applied").count();
    std::fs::write(&file, r#"{"log": "info"}"#).unwrap();
    eventually(PATIENCE, "the info filter applied", || async {
        (applied() >= 1).then_some(())
    })
    .await;

    // A filter that is not one, and a field that is not a setting: refused, named, filter kept.
    for bad in [r#"{"log": "efms_api=loudest"}"#, r#"{"logs": "debug"}"#] {
        let refusals = replica
            .log()
            .matches("the settings file is refused")
            .count();
        std::fs::write(&file, bad).unwrap();
        replica.signal("HUP");
        eventually(PATIENCE, "the refusal logged", || async {
            (replica
                .log()
                .matches("the settings file is refused")
                .count()
                > refusals)
                .then_some(())
        })
        .await;
    }
    assert!(replica.log().contains("`log`: "), "{}", replica.log());
    assert!(
        replica.log().contains("unknown field `logs`"),
        "{}",
        replica.log()
    );
    // Still at info: the next good file's line shows.
    std::fs::write(&file, r#"{"log": "info,efms_api=debug"}"#).unwrap();
    replica.signal("HUP");
    eventually(PATIENCE, "the next filter applied", || async {
        (applied() >= 2).then_some(())
    })
    .await;
    std::fs::remove_dir_all(&dir).unwrap();
}
