//! What a replay of the configuration read models holds back between batches.
//!
//! A replay runs in one transaction that nobody reads until it commits, so the order its rows
//! reach the tables does not matter, only the rows at the end. It keeps the newest change of
//! recently changed resources in memory: the next change of a held resource closes the held
//! version there and takes its place as the current row, so a resource changed a hundred times
//! writes a hundred versions once each, closed, and its current row once, instead of each
//! version written open then rewritten by the update that closes it, and the current row
//! rewritten at every change (each a row rewrite of a whole document, with its index entries
//! and WAL). What has been held longest is written out when too much is held, the versions
//! open, and a later change then goes through the same statements as the projector's.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::tables::{
    close_open_versions, delete_current, insert_versions, upsert_current, ChangeRow, Commit,
    ResourceKey,
};
use crate::projector::ProjectionError;

/// How many resources a replay holds at most by default (each with its document: tens of
/// megabytes for typical documents).
const HELD_RESOURCES: usize = 25_000;

/// How many closed versions a replay gathers before writing them in one statement.
const WRITE_EVERY: usize = 2_000;

/// A held resource: its newest change and, if it has a current row to write, the `created_at`
/// that row gets if it is new (`None` after a deletion of it or of its branch).
#[derive(Debug)]
struct Held {
    /// When it was held: entries of [`HeldChanges::order`] with another are stale.
    order: u64,
    row: Arc<ChangeRow>,
    created_at: Option<DateTime<Utc>>,
}

/// The changes a replay holds back (see the module documentation).
#[derive(Debug)]
pub struct HeldChanges {
    /// How many resources it holds at most.
    limit: usize,
    held: HashMap<ResourceKey, Held>,
    /// Held resources, oldest first, with the order they were held in.
    order: VecDeque<(ResourceKey, u64)>,
    /// Versions closed in memory, not yet written.
    closed: Vec<(Arc<ChangeRow>, i64)>,
    /// The order the next held change gets.
    next: u64,
}

impl Default for HeldChanges {
    fn default() -> Self {
        Self::holding(HELD_RESOURCES)
    }
}

impl HeldChanges {
    /// Holds at most `limit` resources.
    pub fn holding(limit: usize) -> Self {
        Self {
            limit,
            held: HashMap::new(),
            order: VecDeque::new(),
            closed: Vec::new(),
            next: 0,
        }
    }

    /// Takes one commit's changes (of one branch at one revision).
    pub(crate) async fn take(
        &mut self,
        tx: &mut PgConnection,
        commit: Commit<'_>,
        rows: Vec<ChangeRow>,
    ) -> Result<(), ProjectionError> {
        let (_, _, revision) = commit;
        // Resources not held: their open version, and their current row if deleted, are in
        // the tables.
        let mut open_in_table: (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        let mut deleted_in_table: (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        for row in rows {
            let key = row.key();
            // A put keeps the `created_at` of a current row it replaces.
            let created_at = if let Some(previous) = self.held.remove(&key) {
                self.closed.push((previous.row, revision));
                previous.created_at.unwrap_or(row.recorded_at)
            } else {
                open_in_table.0.push(row.kind.clone());
                open_in_table.1.push(row.name.clone());
                row.recorded_at
            };
            let created_at = if row.document.is_some() {
                Some(created_at)
            } else {
                deleted_in_table.0.push(row.kind.clone());
                deleted_in_table.1.push(row.name.clone());
                None
            };
            self.next += 1;
            self.order.push_back((key.clone(), self.next));
            self.held.insert(
                key,
                Held {
                    order: self.next,
                    row: Arc::new(row),
                    created_at,
                },
            );
        }
        let (kinds, names) = (strs(&open_in_table.0), strs(&open_in_table.1));
        close_open_versions(tx, commit, &kinds, &names).await?;
        let (kinds, names) = (strs(&deleted_in_table.0), strs(&deleted_in_table.1));
        delete_current(tx, commit, &kinds, &names).await?;
        self.write_out_oldest(tx).await?;
        if self.closed.len() >= WRITE_EVERY {
            self.write_closed(tx).await?;
        }
        Ok(())
    }

    /// A deleted branch leaves the current state: its held current rows are dropped (its
    /// versions stay, as in the tables).
    pub(crate) fn branch_deleted(&mut self, tenant_id: Uuid, branch: &str) {
        for held in self.held.values_mut() {
            if held.row.tenant_id == tenant_id && held.row.branch == branch {
                held.created_at = None;
            }
        }
    }

    /// Writes out the resources held longest while too many are held, and drops stale
    /// entries of the order once they outnumber the live ones.
    async fn write_out_oldest(&mut self, tx: &mut PgConnection) -> Result<(), ProjectionError> {
        let mut out = Vec::new();
        while self.held.len() > self.limit {
            let Some((key, order)) = self.order.pop_front() else {
                break;
            };
            if self.held.get(&key).is_some_and(|held| held.order == order) {
                out.push(self.held.remove(&key).expect("just found"));
            }
        }
        if self.order.len() > 2 * self.held.len() + WRITE_EVERY {
            let held = &self.held;
            self.order
                .retain(|(key, order)| held.get(key).is_some_and(|h| h.order == *order));
        }
        write_held(tx, &out).await
    }

    /// Writes the versions closed in memory.
    async fn write_closed(&mut self, tx: &mut PgConnection) -> Result<(), ProjectionError> {
        for chunk in self.closed.chunks(WRITE_EVERY) {
            let rows: Vec<&ChangeRow> = chunk.iter().map(|(row, _)| row.as_ref()).collect();
            let valid_to: Vec<Option<i64>> = chunk.iter().map(|(_, to)| Some(*to)).collect();
            insert_versions(tx, &rows, &valid_to).await?;
        }
        self.closed.clear();
        Ok(())
    }

    /// Writes everything still held, at the end of the replay.
    pub(crate) async fn finish(mut self, tx: &mut PgConnection) -> Result<(), ProjectionError> {
        self.write_closed(tx).await?;
        let held: Vec<Held> = self.held.into_values().collect();
        for chunk in held.chunks(WRITE_EVERY) {
            write_held(tx, chunk).await?;
        }
        Ok(())
    }
}

/// A column of strings, borrowed.
fn strs(column: &[String]) -> Vec<&str> {
    column.iter().map(String::as_str).collect()
}

/// Writes held resources: each version open, and the current row of each that has one (the
/// rows of deleted resources and branches were removed from the table when those were taken).
async fn write_held(tx: &mut PgConnection, held: &[Held]) -> Result<(), ProjectionError> {
    let rows: Vec<&ChangeRow> = held.iter().map(|h| h.row.as_ref()).collect();
    insert_versions(tx, &rows, &vec![None; rows.len()]).await?;
    let (puts, created_at): (Vec<&ChangeRow>, Vec<DateTime<Utc>>) = held
        .iter()
        .filter_map(|h| Some((h.row.as_ref(), h.created_at?)))
        .unzip();
    upsert_current(tx, &puts, &created_at).await
}
