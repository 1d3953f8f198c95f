//! The reports the control plane has not acknowledged yet, numbered, in order: what a new stream of
//! the same process sends again from the point the server's `Welcome` names.
//!
//! The buffer is bounded. When it is full, the oldest heartbeat or usage report goes first (the
//! next one says as much), then facts or a snapshot that a later one replaces; an event only when
//! nothing else is left. Whatever goes is counted and logged.

use std::collections::VecDeque;
use std::sync::Mutex;

use efms_fleet_proto::agent_message::Body;
use efms_fleet_proto::AgentMessage;
use tokio::sync::watch;

/// The most messages one batch hands to a stream.
const BATCH: usize = 64;

/// The numbered reports not yet acknowledged.
#[derive(Debug)]
pub(crate) struct Outbox {
    pending: Mutex<Pending>,
    /// The seq of the last report pushed.
    pushed: watch::Sender<u64>,
}

#[derive(Debug)]
struct Pending {
    next_seq: u64,
    messages: VecDeque<AgentMessage>,
    capacity: usize,
    dropped: u64,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` reports; the first is numbered 1.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            pending: Mutex::new(Pending {
                next_seq: 1,
                messages: VecDeque::new(),
                capacity: capacity.max(1),
                dropped: 0,
            }),
            pushed: watch::Sender::new(0),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Numbers `body` with the next seq and keeps it until acknowledged; its seq.
    pub(crate) fn push(&self, body: Body) -> u64 {
        let seq = {
            let mut pending = self.pending();
            let seq = pending.next_seq;
            pending.next_seq += 1;
            if pending.messages.len() >= pending.capacity {
                pending.evict();
            }
            pending.messages.push_back(AgentMessage {
                seq,
                body: Some(body),
            });
            seq
        };
        self.pushed.send_replace(seq);
        seq
    }

    /// Forgets every report up to `seq`: the server stored them.
    pub(crate) fn ack(&self, seq: u64) {
        let mut pending = self.pending();
        while pending
            .messages
            .front()
            .is_some_and(|message| message.seq <= seq)
        {
            pending.messages.pop_front();
        }
    }

    /// How many reports were dropped because the buffer was full.
    #[cfg(test)]
    pub(crate) fn dropped(&self) -> u64 {
        self.pending().dropped
    }

    /// The reports kept after `seq`, at most [`BATCH`] of them.
    fn after(&self, seq: u64) -> Vec<AgentMessage> {
        let pending = self.pending();
        let start = pending
            .messages
            .partition_point(|message| message.seq <= seq);
        pending
            .messages
            .range(start..)
            .take(BATCH)
            .cloned()
            .collect()
    }

    /// The next reports after `*sent`, waiting for one to be pushed when there is none; `*sent`
    /// moves to the last one returned (or past the ones dropped meanwhile).
    pub(crate) async fn next_batch(&self, sent: &mut u64) -> Vec<AgentMessage> {
        let mut pushed = self.pushed.subscribe();
        loop {
            let latest = *pushed.borrow_and_update();
            let batch = self.after(*sent);
            if let Some(last) = batch.last() {
                *sent = last.seq;
                return batch;
            }
            // Nothing kept after `sent`: whatever was pushed up to `latest` was dropped.
            *sent = (*sent).max(latest);
            if pushed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Pending {
    /// Drops one report to make room.
    fn evict(&mut self) {
        let position = self
            .messages
            .iter()
            .position(|message| {
                matches!(
                    message.body,
                    Some(Body::Heartbeat(_) | Body::Usage(_) | Body::Config(_))
                )
            })
            .or_else(|| self.superseded(|body| matches!(body, Body::Facts(_))))
            .or_else(|| self.superseded(|body| matches!(body, Body::Snapshot(_))))
            // An order's outcome is never dropped while anything else can be.
            .or_else(|| {
                self.messages
                    .iter()
                    .position(|message| !matches!(message.body, Some(Body::Done(_))))
            })
            .unwrap_or(0);
        let Some(message) = self.messages.remove(position) else {
            return;
        };
        self.dropped += 1;
        if self.dropped == 1 || self.dropped.is_multiple_of(1000) {
            tracing::warn!(
                dropped = self.dropped,
                seq = message.seq,
                kind = kind(message.body.as_ref()),
                capacity = self.capacity,
                "the buffer of reports the control plane has not acknowledged is full: dropped the \
                 oldest that matters least"
            );
        }
    }

    /// The oldest report of a kind that a later one of that kind replaces.
    fn superseded(&self, of_kind: impl Fn(&Body) -> bool) -> Option<usize> {
        let mut positions = self
            .messages
            .iter()
            .enumerate()
            .filter(|(_, message)| message.body.as_ref().is_some_and(&of_kind))
            .map(|(position, _)| position);
        let first = positions.next()?;
        positions.next().map(|_| first)
    }
}

/// A report's kind, for the logs.
pub(crate) fn kind(body: Option<&Body>) -> &'static str {
    match body {
        Some(Body::Hello(_)) => "hello",
        Some(Body::Facts(_)) => "facts",
        Some(Body::Heartbeat(_)) => "heartbeat",
        Some(Body::Snapshot(_)) => "snapshot",
        Some(Body::Event(_)) => "event",
        Some(Body::Usage(_)) => "usage",
        Some(Body::Done(_)) => "done",
        Some(Body::Config(_)) => "config",
        None => "empty",
    }
}

#[cfg(test)]
mod tests {
    use efms_fleet_proto::{ContainerEvent, ContainerSnapshot, ContainerUsages, Heartbeat};

    use super::*;

    fn heartbeat() -> Body {
        Body::Heartbeat(Heartbeat::default())
    }

    fn event(time_nanos: i64) -> Body {
        Body::Event(ContainerEvent {
            time_nanos,
            ..ContainerEvent::default()
        })
    }

    fn snapshot() -> Body {
        Body::Snapshot(ContainerSnapshot::default())
    }

    fn kinds_and_seqs(outbox: &Outbox) -> Vec<(&'static str, u64)> {
        outbox
            .after(0)
            .iter()
            .map(|message| (kind(message.body.as_ref()), message.seq))
            .collect()
    }

    #[test]
    fn reports_are_numbered_from_one_and_an_ack_forgets_up_to_its_seq() {
        let outbox = Outbox::new(10);
        assert_eq!(outbox.push(snapshot()), 1);
        assert_eq!(outbox.push(event(1)), 2);
        assert_eq!(outbox.push(heartbeat()), 3);
        outbox.ack(2);
        assert_eq!(kinds_and_seqs(&outbox), [("heartbeat", 3)]);
        outbox.ack(2);
        assert_eq!(outbox.after(0).len(), 1);
        assert_eq!(outbox.push(event(2)), 4);
        outbox.ack(9);
        assert!(outbox.after(0).is_empty());
    }

    #[test]
    fn a_full_buffer_drops_heartbeats_and_usage_first() {
        let outbox = Outbox::new(4);
        outbox.push(snapshot());
        outbox.push(heartbeat());
        outbox.push(event(1));
        outbox.push(Body::Usage(ContainerUsages::default()));
        outbox.push(event(2));
        outbox.push(event(3));
        assert_eq!(
            kinds_and_seqs(&outbox),
            [("snapshot", 1), ("event", 3), ("event", 5), ("event", 6)]
        );
        assert_eq!(outbox.dropped(), 2);
    }

    #[test]
    fn a_full_buffer_keeps_the_last_snapshot_and_drops_an_older_one_before_any_event() {
        let outbox = Outbox::new(3);
        outbox.push(snapshot());
        outbox.push(event(1));
        outbox.push(snapshot());
        outbox.push(event(2));
        assert_eq!(
            kinds_and_seqs(&outbox),
            [("event", 2), ("snapshot", 3), ("event", 4)]
        );
        // Nothing left but the last snapshot and events: the oldest goes.
        outbox.push(event(5));
        assert_eq!(
            kinds_and_seqs(&outbox),
            [("snapshot", 3), ("event", 4), ("event", 5)]
        );
        assert_eq!(outbox.dropped(), 2);
    }

    #[tokio::test]
    async fn a_batch_starts_after_the_seq_given_and_waits_for_the_next_report() {
        let outbox = std::sync::Arc::new(Outbox::new(10));
        outbox.push(event(1));
        outbox.push(event(2));
        outbox.push(event(3));
        let mut sent = 1;
        let batch = outbox.next_batch(&mut sent).await;
        assert_eq!(
            batch.iter().map(|message| message.seq).collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(sent, 3);
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                let mut sent = 3;
                outbox.next_batch(&mut sent).await
            }
        });
        tokio::task::yield_now().await;
        outbox.push(heartbeat());
        let batch = waiting.await.unwrap();
        assert_eq!(batch[0].seq, 4);
    }
}
