//! `efms serve`: the HTTP API and the gRPC server in one process, stopped together on SIGTERM or
//! Ctrl-C after in-flight requests finish.

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::{serve_http_with, AppState, XdsAddress};
use crate::auth::JwtKeys;
use crate::db;
use crate::settings::ServeConfig;

/// Runs the control plane until a shutdown signal arrives.
pub async fn run(
    config: ServeConfig,
    set_log_filter: crate::logging::SetLogFilter,
) -> anyhow::Result<()> {
    let pool = db::connect(&config.database).await?;
    db::migrate(&pool).await?;
    let http = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on EFMS_HTTP_ADDR {}", config.http_addr))?;
    let grpc = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on EFMS_GRPC_ADDR {}", config.grpc_addr))?;

    let keyring = checked_keyring(&pool, &config).await?;
    let (stop, stopped) = watch::channel(false);
    // Background work (projectors first) stops once the requests in flight are done.
    let (retire, retired) = watch::channel(false);
    let state = AppState::start_stopping(
        pool.clone(),
        match &config.oidc {
            Some(issuer) => JwtKeys::from_secret(&config.jwt_secret).with_external(issuer.clone()),
            None => JwtKeys::from_secret(&config.jwt_secret),
        },
        keyring,
        config.poll_interval,
        (
            crate::state::futures_shared(signalled(stopped.clone())),
            crate::state::futures_shared(signalled(retired)),
        ),
    )
    .with_token_settings(config.tokens)
    .with_login_limits(config.edge.login)
    .with_xds_address(XdsAddress {
        tls_ca: config.tls.clone(),
        ..match &config.xds_advertise_addr {
            Some((host, port)) => XdsAddress {
                host: host.clone(),
                port: *port,
                tls_ca: None,
            },
            None => XdsAddress::for_listener(grpc.local_addr()?),
        }
    })
    .with_limits(config.limits)
    .with_fleet_settings(config.fleet)
    .with_purge_settings(config.tenant_purge)
    .with_telemetry_settings(config.telemetry)
    .with_webhook_settings(config.webhooks.clone())
    .with_alert_settings(config.alerts);
    reload_on_change(&config, set_log_filter, &stopped);
    send_reads_to_replica(&state, &config);
    let xds = state.xds.clone();
    xds.set_replica(efms_xds::ReplicaSettings {
        lease: config.replica_lease,
        advertised: Some(state.xds_address.authority()),
    });
    let background = state.background.clone();
    let telemetry = state.xds.telemetry().cloned();
    tracing::info!(
        http = %http.local_addr()?,
        grpc = %grpc.local_addr()?,
        tls = config.tls.is_some(),
        version = env!("CARGO_PKG_VERSION"),
        "efms is serving"
    );
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        stop.send_replace(true);
    });
    let tls = config.tls.as_ref();
    let http_server = async {
        serve_http_with(
            http,
            tls,
            state,
            config.edge.http,
            signalled(stopped.clone()),
        )
        .await
        .context("the HTTP server failed")
    };
    let grpc_server = async {
        efms_xds::serve_with(grpc, tls, xds, signalled(stopped.clone()))
            .await
            .context("the gRPC server failed")
    };
    let served = tokio::try_join!(http_server, grpc_server);
    let unfinished = background.finish(crate::background::GRACE).await;
    retire.send_replace(true);
    served?;
    if unfinished > 0 {
        tracing::warn!(
            unfinished,
            "bulk jobs still running at exit end with the process; their records stop moving and \
             every replica reports them failed"
        );
    }
    if let Some(telemetry) = telemetry {
        // The statistics gathered since the last bucket ended are written before the pool closes.
        telemetry.stopped().await;
    }
    pool.close().await;
    tracing::info!("efms stopped");
    Ok(())
}

/// Reads the settings file now, then reads it and the TLS files again on SIGHUP or a change.
fn reload_on_change(
    config: &ServeConfig,
    set_log_filter: crate::logging::SetLogFilter,
    stopped: &watch::Receiver<bool>,
) {
    if let Some(path) = config.settings_file.clone() {
        crate::reload::settings_file(&path, &set_log_filter);
        let watched = path.clone();
        crate::reload::watch(
            vec![path],
            move || crate::reload::settings_file(&watched, &set_log_filter),
            signalled(stopped.clone()),
        );
    }
    if let (Some(identity), Some((cert, key))) = (config.tls.clone(), config.tls_files.clone()) {
        crate::reload::watch(
            vec![cert.clone(), key.clone()],
            move || crate::reload::tls(&identity, &cert, &key),
            signalled(stopped.clone()),
        );
    }
}

/// The keyring of the master key `config` names, refused when the database's data keys are
/// wrapped under another.
async fn checked_keyring(
    pool: &sqlx::PgPool,
    config: &ServeConfig,
) -> anyhow::Result<efms_commands::Keyring> {
    let keyring = efms_commands::Keyring::new(pool.clone(), config.master_key.clone());
    let foreign = keyring.foreign_keys().await?;
    if foreign > 0 {
        anyhow::bail!(
            "EFMS_MASTER_KEY: {foreign} tenant data key(s) are wrapped by another master key; \
             serve with that key, or move them with `efms rotate-master-key`"
        );
    }
    Ok(keyring)
}

/// Resolves once the stop flag is raised (or its sender is gone).
async fn signalled(mut stopped: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Sends reads to the read replica, when one is set.
fn send_reads_to_replica(state: &AppState, config: &ServeConfig) {
    if let Some(replica) = &config.read_replica {
        // Connected lazily: a replica that is down at start leaves reads to the primary.
        let pool = crate::db::pool_options(config.database.max_connections)
            .acquire_timeout(std::time::Duration::from_secs(1))
            .connect_lazy_with(replica.options.clone());
        state.reads.set_replica(pool, replica.wait);
    }
}
