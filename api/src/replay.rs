//! `efms replay`: every read model rebuilt from the log, of all tenants or of one, with its
//! progress shown as a bar on a terminal and as log lines elsewhere.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use efms_projections::replay::events_to_replay;
use efms_projections::{
    ConfigProjection, FleetProjection, Projection, Projector, Rebuild, Replayed, RolloutProjection,
    TenantsProjection,
};
use sqlx::PgPool;

/// How often progress is logged when it is not drawn on a terminal.
const LOG_EVERY: Duration = Duration::from_secs(2);

/// What one read model's replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadModelReplayed {
    /// The projection's name.
    pub projection: &'static str,
    /// What its replay did.
    pub replayed: Replayed,
}

/// Rebuilds every read model (the tenant registry, configuration, fleet, rollouts) of `rebuild` from the
/// log, one after the other, each in one transaction.
pub async fn replay(pool: &PgPool, rebuild: Rebuild) -> anyhow::Result<Vec<ReadModelReplayed>> {
    let total = events_to_replay(pool, rebuild).await?;
    let mut done = Vec::new();
    done.push(one(pool, TenantsProjection, rebuild, total).await?);
    done.push(one(pool, ConfigProjection, rebuild, total).await?);
    done.push(one(pool, FleetProjection, rebuild, total).await?);
    done.push(one(pool, RolloutProjection, rebuild, total).await?);
    Ok(done)
}

async fn one<P: Projection>(
    pool: &PgPool,
    projection: P,
    rebuild: Rebuild,
    total: u64,
) -> anyhow::Result<ReadModelReplayed> {
    let mut shown = Progress::new(P::NAME, total);
    let replayed = Projector::new(pool.clone(), projection)
        .replay(rebuild, &mut |events| shown.show(events))
        .await?;
    shown.finish(&replayed);
    Ok(ReadModelReplayed {
        projection: P::NAME,
        replayed,
    })
}

/// How a replay's progress is shown: a bar redrawn on a terminal, a line now and then otherwise.
struct Progress {
    projection: &'static str,
    total: u64,
    started: Instant,
    last_logged: Instant,
    terminal: bool,
}

impl Progress {
    fn new(projection: &'static str, total: u64) -> Self {
        let now = Instant::now();
        Self {
            projection,
            total,
            started: now,
            last_logged: now,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn show(&mut self, events: u64) {
        if self.terminal {
            let mut stderr = std::io::stderr().lock();
            // A failed write to the terminal only loses a frame of the bar.
            let _ = write!(stderr, "\r{}", bar(self.projection, events, self.total));
            let _ = stderr.flush();
        } else if self.last_logged.elapsed() >= LOG_EVERY {
            self.last_logged = Instant::now();
            tracing::info!(
                projection = self.projection,
                events,
                of = self.total,
                seconds = self.started.elapsed().as_secs_f64(),
                "replaying"
            );
        }
    }

    fn finish(&self, replayed: &Replayed) {
        if self.terminal {
            eprintln!();
        }
        let seconds = replayed.elapsed.as_secs_f64();
        tracing::info!(
            projection = self.projection,
            events = replayed.events,
            seconds,
            events_per_second = per_second(replayed.events, seconds),
            "replayed"
        );
    }
}

/// Events per second, rounded.
fn per_second(events: u64, seconds: f64) -> u64 {
    if seconds > 0.0 {
        // Float to integer conversion saturates; a rate has no need of more precision.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rate = (events as f64 / seconds).round() as u64;
        rate
    } else {
        events
    }
}

/// A progress bar: `config [#########-----------]  45% 450000/1000000 events`.
fn bar(projection: &str, events: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let shown = events.min(total.max(1));
    let filled = shown * WIDTH / total.max(1);
    let percent = shown * 100 / total.max(1);
    let filled = usize::try_from(filled).unwrap_or_default();
    let empty = usize::try_from(WIDTH).unwrap_or_default() - filled;
    format!(
        "{projection:<8} [{}{}] {percent:>3}% {events}/{total} events",
        "#".repeat(filled),
        "-".repeat(empty)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_events_applied() {
        assert_eq!(
            bar("config", 50, 100),
            "config   [###############---------------]  50% 50/100 events"
        );
        assert_eq!(
            bar("fleet", 0, 0),
            format!("fleet    [{}]   0% 0/0 events", "-".repeat(30))
        );
        assert!(
            bar("tenants", 120, 100).contains("100%"),
            "more than counted stays full"
        );
    }

    #[test]
    fn a_rate_is_events_per_second() {
        assert_eq!(per_second(1_000, 0.5), 2_000);
        assert_eq!(per_second(7, 0.0), 7);
    }
}
