//! The incremental (delta) protocol: responses carry only the resources that changed and the names
//! of those removed.
//!
//! The stream keeps, per type, the versions the proxy holds (from `initial_resource_versions` on a
//! reconnect, then from what it accepted) and sends the difference with the snapshot. A refused
//! response is rolled back from that view and not offered again until the snapshot changes. The
//! ordering rules are those of the SotW stream: clusters, endpoints and secrets before listeners
//! and routes, and their removals only once the listeners and routes sent with them are answered.
//!
//! A wildcard stream whose view is based on the snapshot before the current one (the common case
//! after a commit) compares only the names the snapshot says changed, and the names where it
//! differs from its base: a push costs what it changes, not what the proxy holds.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use efms_domain::envoy::ResourceKind;
use efms_projections::snapshots::{KindResources, XDS_KINDS};
use efms_projections::{GroupSnapshot, XdsResource};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tonic::Status;

use crate::driver::{Core, Engine, Subscription};
use crate::held::Held;

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
    held: Held,
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
    version: String,
    revision: u64,
    at: Instant,
}

/// What would change at the proxy.
#[derive(Debug, Default)]
struct Push {
    /// Resources to send.
    updated: Vec<Arc<XdsResource>>,
    /// Names to remove.
    removed: Vec<String>,
    /// Removals wait until listeners and routes are answered.
    held_back: bool,
    /// When only the snapshot's change was compared: the names it changed, to move the view's
    /// base to the current snapshot.
    changed: Option<Vec<String>>,
}

impl crate::driver::TypeState for TypeState {
    fn must_answer(&self) -> bool {
        self.must_answer
    }
}

impl TypeState {
    /// Adds to `removed` the names asked for by name that do not exist, once each: Envoy then
    /// stops waiting for them.
    fn report_absent(&mut self, want: &KindResources, removed: &mut Vec<String>) {
        let Self {
            sub, held, absent, ..
        } = self;
        absent.retain(|name| sub.names.contains(name) && !want.contains_key(name));
        if sub.wildcard {
            return;
        }
        for name in &sub.names {
            if !want.contains_key(name) && held.get(name).is_none() && absent.insert(name.clone()) {
                removed.push(name.clone());
            }
        }
    }

    fn may_differ(&self, snapshot: &GroupSnapshot, kind: ResourceKind) -> bool {
        !self.sub.wildcard || self.held.set() != snapshot.kind_set(kind)
    }

    /// The names to compare when the view's base is the current snapshot's set or the one
    /// before it; `None` when everything must be compared.
    fn shortcut<'a>(
        &self,
        snapshot: &'a GroupSnapshot,
        kind: ResourceKind,
    ) -> Option<&'a [String]> {
        if !self.sub.wildcard {
            return None;
        }
        let base = self.held.base_set();
        if base == snapshot.kind_set(kind) {
            return Some(&[]);
        }
        snapshot
            .changes
            .get(kind)
            .filter(|change| change.from == base)
            .map(|change| change.names.as_slice())
    }

    /// What would change at the proxy to hold `want`; removals are held back if `keep_removed`.
    fn push(
        &self,
        snapshot: &GroupSnapshot,
        kind: ResourceKind,
        want: &KindResources,
        keep_removed: bool,
    ) -> Push {
        let mut push = Push::default();
        let consider = |push: &mut Push, name: &String| {
            let wanted = want.get(name.as_str());
            if wanted.map(|resource| resource.version.as_str()) == self.held.get(name) {
                return;
            }
            match wanted {
                Some(resource) => push.updated.push(resource.clone()),
                None if keep_removed => push.held_back = true,
                None => push.removed.push(name.clone()),
            }
        };
        if let Some(changed) = self.shortcut(snapshot, kind) {
            let names: BTreeSet<&String> = self.held.differences().chain(changed).collect();
            for name in names {
                consider(&mut push, name);
            }
            push.changed = Some(changed.to_vec());
            return push;
        }
        push.updated = want
            .values()
            .filter(|resource| self.held.get(&resource.name) != Some(resource.version.as_str()))
            .cloned()
            .collect();
        for name in self.held.names() {
            if !want.contains_key(name) {
                consider(&mut push, name);
            }
        }
        push
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
        // What a proxy holds is trimmed to its subscription when that may have narrowed, or when
        // a refusal marked names (perhaps unsubscribed since) as held in an unknown version.
        let narrowed = first
            || !request.resource_names_unsubscribe.is_empty()
            || request.error_detail.is_some();
        if first {
            state.held = Held::from_versions(request.initial_resource_versions);
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
                    for touched in std::iter::once(&sent.touched)
                        .chain(state.pending.iter().map(|later| &later.touched))
                    {
                        for name in touched {
                            state.held.put(name, Some(""));
                        }
                    }
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
        if !state.sub.wildcard && narrowed {
            // The proxy forgets what it unsubscribed from; so does its view here.
            let TypeState { sub, held, .. } = state;
            held.retain(|name| sub.names.contains(name));
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
                        let push = state.push(&snapshot, kind, &want, false);
                        (!push.updated.is_empty() || !push.removed.is_empty())
                            && state.refused.as_deref()
                                != Some(
                                    state
                                        .held
                                        .set_after(&push.updated, &push.removed)
                                        .version()
                                        .as_str(),
                                )
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
            let Push {
                updated,
                mut removed,
                held_back,
                changed,
            } = state.push(&snapshot, kind, &want, keep_removed);
            if let Some(changed) = changed {
                state
                    .held
                    .rebase(want.clone(), snapshot.kind_set(kind), &changed);
            }
            if held_back {
                core.holding = true;
            }
            state.report_absent(&want, &mut removed);
            if updated.is_empty() && removed.is_empty() && !state.must_answer {
                continue;
            }
            let version = state.held.set_after(&updated, &removed).version();
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
            state.held.apply(&updated, &removed);
            if state.sub.wildcard {
                state.held.adopt_if_equal(&want, snapshot.kind_set(kind));
            }
            state.pending.push_back(Sent {
                touched: updated
                    .iter()
                    .map(|resource| resource.name.clone())
                    .chain(removed)
                    .collect(),
                nonce,
                version,
                revision: snapshot.revision,
                at: Instant::now(),
            });
        }
        responses
    }
}
