//! The bootstraps of the Envoy containers agents launch: minted when the order is sent to the
//! agent (never stored in the log), with a proxy token of the group that the tenant's operators
//! can list and revoke under `…/proxy-tokens`, issued in the name of whoever asked for the launch;
//! revoked once the container is removed.

use std::sync::Weak;

use efms_domain::tenant::TenantSlug;
use efms_xds::{BootstrapRequest, ProxyBootstraps};
use futures::future::BoxFuture;

use crate::bootstrap::{bootstrap_document, BootstrapSpec, XdsProtocol};
use crate::routes::proxies::existing_group;
use crate::routes::proxy_tokens::{mint, TokenOwner};
use crate::state::{AppState, Shared};

/// Mints launch bootstraps from the API's state.
pub(crate) struct LaunchBootstraps(Weak<Shared>);

/// Has the fleet's streams mint launch bootstraps from `state` (its settings complete).
pub(crate) fn install(state: &AppState) {
    if let Some(fleet) = state.xds.fleet() {
        fleet.set_bootstraps(std::sync::Arc::new(LaunchBootstraps(state.downgrade())));
    }
}

impl ProxyBootstraps for LaunchBootstraps {
    fn bootstrap(&self, request: BootstrapRequest) -> BoxFuture<'static, Result<String, String>> {
        let state = AppState::upgrade(&self.0);
        Box::pin(async move {
            let state = state.ok_or("the control plane is stopping")?;
            let slug = TenantSlug::parse(request.tenant.as_str()).map_err(|e| e.to_string())?;
            existing_group(&state.pool, request.tenant_id, &request.group)
                .await
                .map_err(|error| error.to_string())?;
            let owner = TokenOwner {
                tenant_id: request.tenant_id,
                slug: &slug,
                issued_by: request.requested_by.clone(),
            };
            // A container runs until replaced: its token lives as long as tokens may.
            let ttl = state.tokens.proxy_max_ttl;
            let token = mint(&state, owner, (&request.group, &request.node_id), ttl)
                .await
                .map_err(|error| format!("cannot mint the proxy's token: {error}"))?;
            let replicas = efms_xds::replicas::advertised(&state.pool)
                .await
                .map_err(|error| format!("cannot list the control plane's replicas: {error}"))?;
            let bootstrap = bootstrap_document(&BootstrapSpec {
                node_id: &request.node_id,
                group: &request.group,
                tenant: slug.as_str(),
                token: &token,
                protocol: XdsProtocol::Sotw,
                xds: &state.xds_address,
                replicas: &replicas,
                admin_port: request.admin_port,
                stats_flush: state.stats_flush_interval(),
            });
            Ok(bootstrap.to_string())
        })
    }

    fn retire(
        &self,
        tenant_id: uuid::Uuid,
        node_id: String,
    ) -> BoxFuture<'static, Result<u64, String>> {
        let state = AppState::upgrade(&self.0);
        Box::pin(async move {
            let state = state.ok_or("the control plane is stopping")?;
            let revoked = crate::store::proxy_tokens::revoke_node(
                &state.pool,
                tenant_id,
                &node_id,
                "efms (its container was removed)",
            )
            .await
            .map_err(|error| format!("cannot revoke the proxy's tokens: {error}"))?;
            if revoked > 0 {
                state.xds.recheck_credentials();
            }
            Ok(revoked)
        })
    }
}
