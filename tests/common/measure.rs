//! Figures the load generators take of the processes they measure.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Resident memory (KiB) and CPU time (seconds) of `pid`.
pub fn process_usage(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; after the `)` they are the 12th and 13th.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    #[allow(clippy::cast_precision_loss)]
    Some((rss, ticks as f64 / 100.0))
}

/// The `p` quantile (0 to 1) of `sorted`, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// CPU time (seconds) of every process whose command name is `name` (all of Postgres's backends).
pub fn cpu_seconds_of_all(name: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
        .filter_map(|pid| process_usage(pid).map(|(_, cpu)| cpu))
        .sum()
}

/// The bytes each of `tables` takes, its partitions and indexes included.
pub async fn table_sizes(pool: &sqlx::PgPool, tables: &[&str]) -> HashMap<String, i64> {
    let mut sizes = HashMap::new();
    for table in tables {
        let size: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
             WHERE c.relname = $1 OR c.oid IN (SELECT inhrelid FROM pg_inherits i
                                              JOIN pg_class p ON p.oid = i.inhparent
                                              WHERE p.relname = $1)",
        )
        .bind(table)
        .fetch_one(pool)
        .await
        .unwrap_or(0);
        sizes.insert((*table).to_owned(), size);
    }
    sizes
}

/// `count` sequential GETs of `url` with `token`: the times of those that succeeded, sorted.
pub async fn timed_gets(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    count: usize,
) -> Vec<Duration> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let ok = client
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .is_ok_and(|response| response.status().is_success());
        if ok {
            times.push(started.elapsed());
        }
    }
    times.sort();
    times
}
