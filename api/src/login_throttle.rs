//! The login throttle (NFR-SE-002): failed logins are counted per tenant and user name and per
//! client address within a window (a minute), in a table of bounded size.
//!
//! An attempt is reserved before its password is checked, so concurrent guesses cannot pass the
//! limit together: each counts as a failure from the moment it starts, and only a login that
//! succeeds takes its reservation back. Entries whose failures are all older than the window are
//! dropped; when the table is full of live entries, logins of names and addresses not in it are
//! refused until some expire, so memory stays within [`ThrottleLimits::max_entries`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// The least time between two sweeps of a full table.
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How many failed logins the throttle allows, and how many entries it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleLimits {
    /// Failed logins of one user name of one tenant per window.
    pub per_user: usize,
    /// Failed logins from one client address (an IPv6 /64) per window, whatever the names.
    pub per_address: usize,
    /// The most user names and addresses kept together.
    pub max_entries: usize,
    /// How long a failure counts.
    pub window: Duration,
}

impl Default for ThrottleLimits {
    fn default() -> Self {
        Self {
            per_user: 5,
            per_address: 30,
            max_entries: 50_000,
            window: Duration::from_secs(60),
        }
    }
}

/// Why an attempt was not allowed, and when one may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// The user name had its failures within the window.
    User {
        /// Seconds until the oldest of them stops counting.
        retry_after_seconds: u32,
    },
    /// The client address had its failures within the window.
    Address {
        /// Seconds until the oldest of them stops counting.
        retry_after_seconds: u32,
    },
    /// The table is full of recent failures of other names and addresses.
    Full {
        /// Seconds until entries may expire.
        retry_after_seconds: u32,
    },
}

/// The recent failures of one user name or address.
type Failures = Vec<Instant>;

#[derive(Debug)]
struct Table {
    users: HashMap<(Uuid, Box<str>), Failures>,
    addresses: HashMap<IpAddr, Failures>,
    last_sweep: Instant,
}

/// Recent failed logins (per replica), shared by the login handlers.
#[derive(Debug, Clone)]
pub struct LoginThrottle {
    table: Arc<Mutex<Table>>,
    limits: ThrottleLimits,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self::new(ThrottleLimits::default())
    }
}

/// An attempt counted as a failure until [`Reservation::succeeded`] takes it back.
#[derive(Debug)]
#[must_use = "a reservation counts as a failure unless the login succeeded"]
pub struct Reservation {
    throttle: LoginThrottle,
    user: (Uuid, Box<str>),
    address: Option<IpAddr>,
    at: Instant,
}

impl Reservation {
    /// The login succeeded: the attempt does not count as a failure.
    pub fn succeeded(self) {
        let mut table = self.throttle.lock();
        forget(table.users.get_mut(&self.user), self.at);
        if let Some(address) = self.address {
            forget(table.addresses.get_mut(&address), self.at);
        }
    }
}

fn forget(failures: Option<&mut Failures>, at: Instant) {
    if let Some(failures) = failures {
        if let Some(index) = failures.iter().position(|failure| *failure == at) {
            failures.swap_remove(index);
        }
    }
}

/// The part of a client address one party is assumed to control: the address itself for IPv4,
/// its /64 network for IPv6.
fn address_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// Keeps the failures within the window; how many there are and when the oldest stops counting.
fn recent(failures: Option<&mut Failures>, now: Instant, window: Duration) -> (usize, u32) {
    let Some(failures) = failures else {
        return (0, 0);
    };
    failures.retain(|at| now.saturating_duration_since(*at) < window);
    let oldest = failures.iter().min().copied().unwrap_or(now);
    let left = window.saturating_sub(now.saturating_duration_since(oldest));
    (failures.len(), seconds(left))
}

fn seconds(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs().saturating_add(1)).unwrap_or(u32::MAX)
}

impl LoginThrottle {
    /// An empty throttle with `limits`.
    pub fn new(limits: ThrottleLimits) -> Self {
        Self {
            table: Arc::new(Mutex::new(Table {
                users: HashMap::new(),
                addresses: HashMap::new(),
                last_sweep: Instant::now(),
            })),
            limits,
        }
    }

    /// The limits it applies.
    pub fn limits(&self) -> ThrottleLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock leaves counts, never a broken table: carry on.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many user names and addresses it keeps now.
    pub fn entries(&self) -> usize {
        let table = self.lock();
        table.users.len() + table.addresses.len()
    }

    /// Counts an attempt to log in as `username` of `tenant_id` from `address` as a failure, unless
    /// the user name or the address had their failures within the window, or the table is full.
    pub fn reserve(
        &self,
        tenant_id: Uuid,
        username: &str,
        address: Option<IpAddr>,
    ) -> Result<Reservation, Throttled> {
        self.reserve_at(Instant::now(), tenant_id, username, address)
    }

    fn reserve_at(
        &self,
        now: Instant,
        tenant_id: Uuid,
        username: &str,
        address: Option<IpAddr>,
    ) -> Result<Reservation, Throttled> {
        let limits = self.limits;
        let user: (Uuid, Box<str>) = (tenant_id, username.into());
        let address = address.map(address_key);
        let mut table = self.lock();
        if now.saturating_duration_since(table.last_sweep) >= limits.window {
            table.sweep(now, limits.window);
        }
        let (count, retry_after_seconds) = recent(table.users.get_mut(&user), now, limits.window);
        if count >= limits.per_user {
            return Err(Throttled::User {
                retry_after_seconds,
            });
        }
        if let Some(address) = address {
            let (count, retry_after_seconds) =
                recent(table.addresses.get_mut(&address), now, limits.window);
            if count >= limits.per_address {
                return Err(Throttled::Address {
                    retry_after_seconds,
                });
            }
        }
        let needed = |table: &Table| {
            usize::from(!table.users.contains_key(&user))
                + address.map_or(0, |address| {
                    usize::from(!table.addresses.contains_key(&address))
                })
        };
        let size = |table: &Table| table.users.len() + table.addresses.len();
        if size(&table) + needed(&table) > limits.max_entries
            && now.saturating_duration_since(table.last_sweep) >= FULL_SWEEP_INTERVAL
        {
            table.sweep(now, limits.window);
        }
        if size(&table) + needed(&table) > limits.max_entries {
            return Err(Throttled::Full {
                retry_after_seconds: seconds(FULL_SWEEP_INTERVAL),
            });
        }
        table.users.entry(user.clone()).or_default().push(now);
        if let Some(address) = address {
            table.addresses.entry(address).or_default().push(now);
        }
        drop(table);
        Ok(Reservation {
            throttle: self.clone(),
            user,
            address,
            at: now,
        })
    }
}

impl Table {
    /// Drops every failure older than the window, and the entries left without one.
    fn sweep(&mut self, now: Instant, window: Duration) {
        let live = |failures: &mut Failures| {
            failures.retain(|at| now.saturating_duration_since(*at) < window);
            !failures.is_empty()
        };
        self.users.retain(|_, failures| live(failures));
        self.addresses.retain(|_, failures| live(failures));
        self.last_sweep = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn throttle(per_user: usize, per_address: usize, max_entries: usize) -> LoginThrottle {
        LoginThrottle::new(ThrottleLimits {
            per_user,
            per_address,
            max_entries,
            window: MINUTE,
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_attempt_after_the_users_limit_is_refused_until_the_window_passes() {
        let throttle = throttle(5, 100, 100);
        let (tenant, start) = (Uuid::nil(), Instant::now());
        let reservations: Vec<_> = (0..5)
            .map(|_| throttle.reserve_at(start, tenant, "bob", None).unwrap())
            .collect();
        assert_eq!(reservations.len(), 5);
        assert!(matches!(
            throttle.reserve_at(start, tenant, "bob", None),
            Err(Throttled::User { .. })
        ));
        assert!(
            throttle.reserve_at(start, tenant, "alice", None).is_ok(),
            "another name is not held up"
        );
        let later = start + MINUTE;
        assert!(throttle.reserve_at(later, tenant, "bob", None).is_ok());
    }

    #[test]
    fn a_login_that_succeeded_takes_its_reservation_back() {
        let throttle = throttle(1, 100, 100);
        let now = Instant::now();
        throttle
            .reserve_at(now, Uuid::nil(), "bob", Some(ip("10.0.0.1")))
            .unwrap()
            .succeeded();
        assert!(throttle
            .reserve_at(now, Uuid::nil(), "bob", Some(ip("10.0.0.1")))
            .is_ok());
    }

    #[test]
    fn one_address_is_limited_whatever_the_names_and_an_ipv6_64_counts_as_one() {
        let throttle = throttle(5, 3, 100);
        let now = Instant::now();
        for (name, address) in [
            ("a", "2001:db8::1"),
            ("b", "2001:db8::2"),
            ("c", "2001:db8::3"),
        ] {
            let _failed = throttle
                .reserve_at(now, Uuid::nil(), name, Some(ip(address)))
                .unwrap();
        }
        assert!(matches!(
            throttle.reserve_at(now, Uuid::nil(), "d", Some(ip("2001:db8::ffff"))),
            Err(Throttled::Address { .. })
        ));
        assert!(throttle
            .reserve_at(now, Uuid::nil(), "d", Some(ip("2001:db8:0:1::1")))
            .is_ok());
    }

    #[test]
    fn the_table_never_holds_more_than_its_bound_and_frees_room_as_failures_expire() {
        let throttle = throttle(5, 5, 10);
        let start = Instant::now();
        let mut refused = 0;
        for n in 0_u16..1000 {
            let name = format!("user{n}");
            let [high, low] = n.to_be_bytes();
            let address = IpAddr::from([10, 0, high, low]);
            match throttle.reserve_at(start, Uuid::nil(), &name, Some(address)) {
                Ok(_failed) => {}
                Err(Throttled::Full { .. }) => refused += 1,
                Err(other) => panic!("{other:?}"),
            }
            assert!(throttle.entries() <= 10, "{} entries", throttle.entries());
        }
        assert_eq!(refused, 995, "five attempts fit, in two entries each");
        let later = start + MINUTE + FULL_SWEEP_INTERVAL;
        assert!(throttle
            .reserve_at(later, Uuid::nil(), "late", Some(ip("10.9.9.9")))
            .is_ok());
        assert_eq!(throttle.entries(), 2, "the expired entries are gone");
    }
}
