//! The incremental (delta) protocol: responses carry only the resources that changed and the names
//! of those removed.
//!
//! The stream keeps, per type, the versions the proxy holds (from `initial_resource_versions` on a
//! reconnect, then from what it accepted) and sends the difference with the snapshot. A refused
//! response is rolled back from that view and not offered again until the snapshot changes. The
//! ordering rules are those of the SotW stream: clusters, endpoints and secrets before listeners
//! and routes, and their removals only once the listeners and routes sent with them are answered.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use efms_domain::envoy::ResourceKind;
use efms_projections::snapshots::{set_version, XDS_KINDS};
use efms_projections::{GroupSnapshot, XdsResource};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tonic::Status;

use crate::driver::{Core, Engine, Subscription};

use crate::session::{removal_waits_for_dependents, wildcard_by_default};
use crate::status::{Outcome, Protocol};
use crate::wire::{self, Wire};

#[derive(Debug, Default)]
pub(crate) struct TypeState {
    /// What the proxy subscribed to.
    sub: Subscription,
    must_answer: bool,
    /// The versions the proxy holds, as far as the stream knows (sent responses count as held
    /// until refused).
    client: BTreeMap<String, String>,
    /// The version of `client` (see `set_version`).
    client_version: String,
    /// Responses not answered yet, oldest first.
    pending: VecDeque<Sent>,
    refused: Option<String>,
    /// Names asked for by name that do not exist and were reported so (in `removed_resources`,
    /// which tells Envoy not to wait for them).
    absent: BTreeSet<String>,
}

#[derive(Debug)]
struct Sent {
    nonce: String,
    /// The names the response sent or removed.
    touched: Vec<String>,
    before: BTreeMap<String, String>,
    version: String,
    revision: u64,
    at: Instant,
}

impl crate::driver::TypeState for TypeState {
    fn must_answer(&self) -> bool {
        self.must_answer
    }
}

impl TypeState {
    /// Adds to `removed` the names asked for by name that do not exist, once each: Envoy then
    /// stops waiting for them.
    fn report_absent(
        &mut self,
        want: &BTreeMap<String, Arc<XdsResource>>,
        removed: &mut Vec<String>,
    ) {
        let Self {
            sub,
            client,
            absent,
            ..
        } = self;
        absent.retain(|name| sub.names.contains(name) && !want.contains_key(name));
        if sub.wildcard {
            return;
        }
        for name in &sub.names {
            if !want.contains_key(name) && !client.contains_key(name) && absent.insert(name.clone())
            {
                removed.push(name.clone());
            }
        }
    }

    fn may_differ(&self, snapshot: &GroupSnapshot, kind: ResourceKind) -> bool {
        !self.sub.wildcard || self.client_version != snapshot.kind_version(kind)
    }

    /// What would change at the proxy: resources to send and names to remove.
    fn difference(
        &self,
        want: &BTreeMap<String, Arc<XdsResource>>,
        keep_removed: bool,
    ) -> (Vec<Arc<XdsResource>>, Vec<String>) {
        let updated = want
            .values()
            .filter(|r| self.client.get(&r.name) != Some(&r.version))
            .cloned()
            .collect();
        let removed = if keep_removed {
            Vec::new()
        } else {
            self.client
                .keys()
                .filter(|name| !want.contains_key(*name))
                .cloned()
                .collect()
        };
        (updated, removed)
    }
}

/// The delta protocol.
pub(crate) struct Delta;

impl Engine for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = Wire;
    type State = TypeState;
    const PROTOCOL: Protocol = Protocol::Delta;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(
        core: &mut Core<TypeState>,
        request: DeltaDiscoveryRequest,
    ) -> Result<(), Status> {
        let Some(kind) = core.requested_kind(&request.type_url)? else {
            return Ok(());
        };
        let state = core.types.entry(kind).or_default();
        let first = !state.sub.requested;
        if first {
            state.client = request.initial_resource_versions.into_iter().collect();
            state.client_version = client_version(&state.client);
            state.must_answer = true;
            if request.resource_names_subscribe.is_empty() && wildcard_by_default(kind) {
                state.sub.wildcard = true;
            }
        }
        state.sub.requested = true;
        if !request.response_nonce.is_empty() {
            if let Some(index) = state
                .pending
                .iter()
                .position(|sent| sent.nonce == request.response_nonce)
            {
                let sent = state.pending.remove(index).expect("found");
                if let Some(error) = request.error_detail {
                    // Envoy may have applied part of a refused response (and the responses
                    // after it): what those touched is unknown, so it is marked so and gets
                    // sent or removed again once the configuration changes.
                    let mut client = sent.before;
                    for touched in std::iter::once(&sent.touched)
                        .chain(state.pending.iter().map(|later| &later.touched))
                    {
                        for name in touched {
                            client.insert(name.clone(), String::new());
                        }
                    }
                    state.client_version = client_version(&client);
                    state.client = client;
                    state.pending.clear();
                    state.refused = Some(sent.version.clone());
                    core.session.record(
                        kind,
                        Outcome::Nacked(error.message),
                        &sent.version,
                        sent.revision,
                    );
                } else {
                    state.pending.drain(..index);
                    state.refused = None;
                    core.session
                        .server()
                        .metrics()
                        .push_latency
                        .observe(sent.at.elapsed().as_secs_f64());
                    core.session
                        .record(kind, Outcome::Acked, &sent.version, sent.revision);
                }
            }
        }
        for name in request.resource_names_subscribe {
            if name == "*" {
                state.sub.wildcard = true;
            } else {
                state.sub.names.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == "*" {
                state.sub.wildcard = false;
            } else {
                state.sub.names.remove(&name);
            }
        }
        if !state.sub.wildcard {
            // The proxy forgets what it unsubscribed from; so does its view here.
            let names = state.sub.names.clone();
            let before = state.client.len();
            state.client.retain(|name, _| names.contains(name));
            if state.client.len() != before {
                state.client_version = client_version(&state.client);
            }
        }
        Ok(())
    }

    fn responses(core: &mut Core<TypeState>) -> Vec<Wire> {
        let snapshot = core.round();
        if !snapshot.exists {
            // No such group (yet, or any more): proxies keep what they run rather than being
            // emptied; requests are answered once the group exists.
            return Vec::new();
        }
        let dependents_pending = core.dependents_pending(|kind, state| {
            state.sub.active()
                && (!state.pending.is_empty()
                    || (state.may_differ(&snapshot, kind) && {
                        let want = state.sub.select(&snapshot, kind);
                        let (updated, removed) = state.difference(&want, false);
                        (!updated.is_empty() || !removed.is_empty())
                            && state.refused.as_deref()
                                != Some(after_version(&state.client, &updated, &removed).as_str())
                    }))
        });
        let mut responses = Vec::new();
        for kind in XDS_KINDS {
            let Some(state) = core
                .types
                .get_mut(&kind)
                .filter(|state| state.sub.requested && (state.sub.active() || state.must_answer))
            else {
                continue;
            };
            if !state.must_answer && !state.may_differ(&snapshot, kind) {
                continue;
            }
            let want = state.sub.select(&snapshot, kind);
            let keep_removed = dependents_pending && removal_waits_for_dependents(kind);
            let (updated, mut removed) = state.difference(&want, keep_removed);
            if keep_removed && state.client.keys().any(|name| !want.contains_key(name)) {
                core.holding = true;
            }
            state.report_absent(&want, &mut removed);
            if updated.is_empty() && removed.is_empty() && !state.must_answer {
                continue;
            }
            let after = after_set(&state.client, &updated, &removed);
            let version = client_version(&after);
            if state.refused.as_deref() == Some(version.as_str()) && !state.must_answer {
                continue;
            }
            state.must_answer = false;
            let nonce = core.session.server().nonce();
            responses.push(wire::delta(
                kind,
                &version,
                updated
                    .iter()
                    .filter(|resource| state.sub.wants(&resource.name)),
                &removed,
                core.session.server().identifier(),
                &nonce,
            ));
            core.session
                .record(kind, Outcome::Sent, &version, snapshot.revision);
            state.client_version.clone_from(&version);
            let removed_names = removed;
            state.pending.push_back(Sent {
                touched: updated
                    .iter()
                    .map(|resource| resource.name.clone())
                    .chain(removed_names)
                    .collect(),
                nonce,
                before: std::mem::replace(&mut state.client, after),
                version,
                revision: snapshot.revision,
                at: Instant::now(),
            });
        }
        responses
    }
}

/// What the proxy holds after applying `updated` and `removed` to `client`.
fn after_set(
    client: &BTreeMap<String, String>,
    updated: &[Arc<XdsResource>],
    removed: &[String],
) -> BTreeMap<String, String> {
    let mut after = client.clone();
    for resource in updated {
        after.insert(resource.name.clone(), resource.version.clone());
    }
    for name in removed {
        after.remove(name);
    }
    after
}

/// The version of what the proxy holds after applying `updated` and `removed`.
fn after_version(
    client: &BTreeMap<String, String>,
    updated: &[Arc<XdsResource>],
    removed: &[String],
) -> String {
    client_version(&after_set(client, updated, removed))
}

/// The version of the set a proxy holds.
fn client_version(client: &BTreeMap<String, String>) -> String {
    set_version(
        client
            .iter()
            .map(|(name, version)| (name.as_str(), version.as_str())),
    )
}
