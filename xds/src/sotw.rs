//! The State-of-the-World protocol: every response carries the whole set of a type the proxy
//! subscribes to.
//!
//! Per type, a response goes out when the proxy first asks, when its subscription changes, or when
//! the set it would get differs from the set last sent. Versions are content hashes, so an
//! unchanged set is never re-sent, and a set the proxy refused is not offered again until it
//! changes. Types go out clusters, endpoints, secrets, then listeners and routes (make before
//! break); a cluster, endpoint set or secret that disappears stays in the sets sent until the
//! listeners and routes sent with the change have been answered, so nothing is removed while
//! something still points at it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use efms_domain::envoy::ResourceKind;
use efms_projections::snapshots::{set_version, KindResources, XDS_KINDS};
use efms_projections::{GroupSnapshot, XdsResource};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tonic::Status;

use crate::driver::{Core, Engine, Subscription};

use crate::session::{removal_waits_for_dependents, wildcard_by_default};
use crate::status::{Outcome, Protocol};
use crate::wire::{self, Wire};

/// What the stream knows of one resource type.
#[derive(Debug, Default)]
pub(crate) struct TypeState {
    /// What the proxy subscribed to.
    sub: Subscription,
    /// A request awaits a response whatever the content (first request, new subscription).
    must_answer: bool,
    /// The last response.
    sent: Option<Sent>,
    /// The version the proxy refused last; not offered again.
    refused: Option<String>,
}

#[derive(Debug)]
struct Sent {
    nonce: String,
    version: String,
    resources: KindResources,
    revision: u64,
    answered: bool,
    at: Instant,
}

impl crate::driver::TypeState for TypeState {
    fn must_answer(&self) -> bool {
        self.must_answer
    }
}

impl TypeState {
    fn outstanding(&self) -> bool {
        self.sent.as_ref().is_some_and(|sent| !sent.answered)
    }

    /// The version of what the proxy should have now; cheap for a wildcard (the snapshot has it).
    fn wanted_version(&self, snapshot: &GroupSnapshot, kind: ResourceKind) -> String {
        if self.sub.wildcard {
            snapshot.kind_version(kind).to_owned()
        } else {
            version_of(&self.sub.select(snapshot, kind))
        }
    }
}

fn version_of(resources: &BTreeMap<String, Arc<XdsResource>>) -> String {
    set_version(
        resources
            .values()
            .map(|r| (r.name.as_str(), r.version.as_str())),
    )
}

/// The State-of-the-World protocol.
pub(crate) struct Sotw;

impl Engine for Sotw {
    type Request = DiscoveryRequest;
    type Response = Wire;
    type State = TypeState;
    const PROTOCOL: Protocol = Protocol::Sotw;

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(core: &mut Core<TypeState>, request: DiscoveryRequest) -> Result<(), Status> {
        let Some(kind) = core.requested_kind(&request.type_url)? else {
            return Ok(());
        };
        let state = core.types.entry(kind).or_default();
        if !request.response_nonce.is_empty() {
            let Some(sent) = state
                .sent
                .as_mut()
                .filter(|sent| sent.nonce == request.response_nonce)
            else {
                // An answer to an older response: superseded, ignored.
                return Ok(());
            };
            if !sent.answered {
                sent.answered = true;
                if let Some(error) = request.error_detail {
                    state.refused = Some(sent.version.clone());
                    let (version, revision) = (sent.version.clone(), sent.revision);
                    core.session
                        .record(kind, Outcome::Nacked(error.message), &version, revision);
                } else {
                    state.refused = None;
                    core.session
                        .server()
                        .metrics()
                        .push_latency
                        .observe(sent.at.elapsed().as_secs_f64());
                    let (version, revision) = (sent.version.clone(), sent.revision);
                    core.session
                        .record(kind, Outcome::Acked, &version, revision);
                }
            }
        }
        let mut names: BTreeSet<String> = request.resource_names.into_iter().collect();
        let wildcard = names.remove("*") || (names.is_empty() && wildcard_by_default(kind));
        let dropped_all = state.sub.requested && !wildcard && names.is_empty();
        if dropped_all {
            // The proxy stopped following the type (its last route or cluster went away): it
            // will not answer a response, so none is sent, and nothing waits for one.
            state.must_answer = false;
            if let Some(sent) = state.sent.as_mut() {
                sent.answered = true;
            }
        } else if !state.sub.requested || wildcard != state.sub.wildcard || names != state.sub.names
        {
            state.must_answer = true;
        }
        state.sub.requested = true;
        state.sub.wildcard = wildcard;
        state.sub.names = names;
        Ok(())
    }

    /// The responses due now, in make-before-break order.
    fn responses(core: &mut Core<TypeState>) -> Vec<Wire> {
        let snapshot = core.round();
        if !snapshot.exists {
            // No such group (yet, or any more): proxies keep what they run rather than being
            // emptied; requests are answered once the group exists.
            return Vec::new();
        }
        let dependents_pending = core.dependents_pending(|kind, state| {
            state.sub.active()
                && (state.outstanding()
                    || state
                        .sent
                        .as_ref()
                        .is_none_or(|sent| state.wanted_version(&snapshot, kind) != sent.version))
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
            let mut want = None;
            let mut version = state.wanted_version(&snapshot, kind);
            if dependents_pending && removal_waits_for_dependents(kind) {
                if let Some(sent) = &state.sent {
                    let mut held = state.sub.select(&snapshot, kind);
                    let mut kept = false;
                    for (name, resource) in sent.resources.iter() {
                        if !held.contains_key(name) && state.sub.wants(name) {
                            Arc::make_mut(&mut held).insert(name.clone(), resource.clone());
                            kept = true;
                        }
                    }
                    if kept {
                        core.holding = true;
                        version = version_of(&held);
                        want = Some(held);
                    }
                }
            }
            let unchanged = state
                .sent
                .as_ref()
                .is_some_and(|sent| sent.version == version)
                || state.refused.as_deref() == Some(version.as_str());
            if unchanged && !state.must_answer {
                continue;
            }
            let want = want.unwrap_or_else(|| state.sub.select(&snapshot, kind));
            state.must_answer = false;
            let nonce = core.session.server().nonce();
            responses.push(wire::sotw(
                &snapshot,
                kind,
                &version,
                want.values(),
                core.session.server().identifier(),
                &nonce,
            ));
            core.session
                .record(kind, Outcome::Sent, &version, snapshot.revision);
            state.sent = Some(Sent {
                nonce,
                version,
                resources: want,
                revision: snapshot.revision,
                answered: false,
                at: Instant::now(),
            });
        }
        responses
    }
}
