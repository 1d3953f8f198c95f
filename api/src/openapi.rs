//! The OpenAPI 3.1 document (`GET /openapi.json`), generated from the route handlers'
//! annotations, and a browsable reference page (`GET /docs`) rendered from it.

use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::problem::{Problem, ProblemField};

use crate::routes::{
    audit, branches, bulk, fleet, grants, health, jobs, login, proxies, proxy_tokens, quotas,
    resources, tenants, users, versions,
};

/// Declares bearer tokens as the API's authentication.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Envoy Fleet Manager", description = "Control plane for fleets of Envoy proxies: every configuration change an immutable event."),
    paths(
        health::healthz, health::readyz, health::metrics,
        tenants::create, tenants::list, tenants::get, tenants::rename,
        crate::routes::tenant_lifecycle::suspend, crate::routes::tenant_lifecycle::resume, crate::routes::tenant_lifecycle::history,
        crate::routes::tenant_lifecycle::delete, crate::routes::tenant_lifecycle::restore,
        audit::list, quotas::get, quotas::put,
        users::create, users::list, users::get, users::delete, users::change, login::login,
        grants::create, grants::list, grants::delete, grants::received,
        resources::list, resources::create, resources::get, resources::replace, resources::patch, resources::delete, resources::group_resources, resources::declaration,
        versions::history, versions::revisions, versions::diff, versions::rollback, versions::rollback_resource,
        proxies::list, proxies::get, proxies::history, proxies::bootstrap, crate::routes::metrics::get, crate::routes::metrics::impact::impact,
        crate::routes::fleet_health::group_health, crate::routes::fleet_health::fleet_health,
        crate::routes::drift::list, crate::routes::events::list, crate::routes::event_stream::stream,
        crate::routes::event_socket::socket, crate::routes::event_tickets::create,
        crate::routes::webhooks::create, crate::routes::webhooks::list, crate::routes::webhooks::get,
        crate::routes::webhooks::update, crate::routes::webhooks::delete, crate::routes::webhooks::rotate_secret,
        crate::routes::webhook_deliveries::list, crate::routes::webhook_deliveries::redeliver,
        crate::routes::alert_rules::create, crate::routes::alert_rules::list, crate::routes::alert_rules::get,
        crate::routes::alert_rules::update, crate::routes::alert_rules::delete,
        crate::routes::alerts::list, crate::routes::alerts::acknowledge,
        proxy_tokens::list, proxy_tokens::revoke,
        fleet::vms::register, fleet::vms::list, fleet::vms::get, fleet::vms::remove, fleet::vms::new_token,
        fleet::placement::change,
        fleet::vms::history, fleet::vms::utilisation, fleet::containers::list, fleet::containers::get,
        fleet::containers::events, fleet::operations::launch, fleet::operations::act,
        fleet::operations::remove, fleet::rollouts::start, fleet::rollouts::get, fleet::rollouts::act,
        bulk::bulk, jobs::get,
        branches::create, branches::list, branches::get, branches::delete, branches::diff, branches::merge,
    ),
    components(schemas(Problem, ProblemField, crate::bootstrap::XdsProtocol)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "tenants", description = "Tenants (FR-MT-001)"),
        (name = "configuration", description = "Envoy resources (FR-EP)"),
        (name = "versions", description = "History, time travel, diff and rollback (FR-VC)"),
        (name = "branches", description = "Branches of the configuration and their merges (FR-VC-005)"),
        (name = "users", description = "Users, service accounts and login (FR-MT-003)"),
        (name = "sharing", description = "Clusters and templates shared between tenants (FR-MT-005)"),
        (name = "proxies", description = "What each Envoy proxy runs, and bootstraps that connect new ones (xDS)"),
        (name = "metrics", description = "The proxies' own statistics per route, listener and cluster (FR-RT-005, FR-LN-005, FR-CL-005)"),
        (name = "events", description = "The tenant's event feed, resumable from any event's cursor (ADR 0014)"),
        (name = "webhooks", description = "Signed deliveries of the tenant's events, with retries and every attempt recorded (API-WH-001…003, ADR 0015)"),
        (name = "alerts", description = "Alert rules of built-in kinds and the alerts they raise (NFR-OB-005, ADR 0016)"),
        (name = "operations", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
pub async fn document() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

/// `GET /docs`: the API reference, rendered in the browser from `/openapi.json` with no external
/// script or stylesheet.
pub async fn reference_page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(REFERENCE_PAGE))
}

const REFERENCE_PAGE: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Envoy Fleet Manager API</title>
<style>
body{font:15px/1.5 system-ui,sans-serif;margin:0;display:flex}
nav{width:18rem;height:100vh;overflow:auto;position:sticky;top:0;background:#f4f5f7;padding:1rem;box-sizing:border-box}
main{flex:1;padding:1rem 2rem;max-width:60rem}
nav a{display:block;color:#333;text-decoration:none;font-size:13px;padding:2px 0}
.op{border:1px solid #ddd;border-radius:6px;margin:1rem 0;padding:.5rem 1rem}
.m{display:inline-block;min-width:4rem;font-weight:700;text-transform:uppercase}
.get{color:#0a7}.post{color:#06c}.put{color:#a60}.patch{color:#a0a}.delete{color:#c22}
code,pre{background:#f4f5f7;border-radius:4px;padding:1px 4px;font-size:13px}pre{padding:.5rem;overflow:auto}
table{border-collapse:collapse}td,th{border-bottom:1px solid #eee;padding:2px 8px;text-align:left;font-size:13px}
</style></head><body><nav id="nav"></nav><main id="main"><p>Loading /openapi.json…</p></main>
<script>
const esc = s => String(s ?? '').replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
fetch('/openapi.json').then(r => r.json()).then(doc => {
  const main = document.getElementById('main'), nav = document.getElementById('nav');
  let html = `<h1>${esc(doc.info.title)} <small>${esc(doc.info.version)}</small></h1><p>${esc(doc.info.description)}</p>`;
  html += '<p>Authentication: <code>Authorization: Bearer &lt;JWT&gt;</code> on every <code>/api/v1</code> route. Errors are <code>application/problem+json</code>.</p>';
  let links = '';
  Object.entries(doc.paths).forEach(([path, ops], i) => Object.entries(ops).forEach(([method, op]) => {
    const id = `op${i}${method}`;
    links += `<a href="#${id}"><span class="m ${method}">${method}</span>${esc(path)}</a>`;
    html += `<div class="op" id="${id}"><h3><span class="m ${method}">${method}</span><code>${esc(path)}</code></h3><p>${esc(op.description || op.summary || '')}</p>`;
    if (op.parameters?.length) html += '<table><tr><th>parameter</th><th>in</th><th>description</th></tr>' +
      op.parameters.map(p => `<tr><td><code>${esc(p.name)}</code></td><td>${esc(p.in)}</td><td>${esc(p.description)}</td></tr>`).join('') + '</table>';
    if (op.requestBody) html += `<p>Body: ${Object.keys(op.requestBody.content).map(c => `<code>${esc(c)}</code>`).join(', ')} ${esc(op.requestBody.description)}</p>`;
    html += '<table><tr><th>status</th><th>meaning</th></tr>' + Object.entries(op.responses).map(([s, r]) => `<tr><td>${s}</td><td>${esc(r.description)}</td></tr>`).join('') + '</table></div>';
  }));
  html += '<h2>Schemas</h2>' + Object.entries(doc.components?.schemas || {}).map(([n, s]) => `<h3 id="schema-${esc(n)}">${esc(n)}</h3><pre>${esc(JSON.stringify(s, null, 2))}</pre>`).join('');
  main.innerHTML = html; nav.innerHTML = '<strong>Operations</strong>' + links;
}).catch(e => { document.getElementById('main').textContent = 'Cannot load /openapi.json: ' + e; });
</script></body></html>"##;
