//! Sign-in throttling. Each password check costs ~20 ms of a core and 19 MiB (argon2), on the
//! same Rayon pool that decrypts bids and checks phones' answers: unthrottled, anyone could guess
//! an agent's password without end, or stall a live opening by sending sign-ins. So checks run
//! one at a time (they never hold more than one pool thread), and wrong passwords are counted
//! three ways: per agent and address, where after [`FREE_FAILURES`] in a row that agent's sign-in
//! from that address is refused without a check for a time that doubles with each further failure
//! (one minute, up to [`MAX_BLOCK_MS`]); per agent from anywhere, with a higher allowance
//! ([`AGENT_FREE_FAILURES`]), so that many addresses do not buy many guesses; and per address
//! whatever the names ([`ADDRESS_FREE_FAILURES`]), so that many names do not either. Counted per
//! address first so that one who guesses does not lock the agent out everywhere (behind a reverse
//! proxy every client has the proxy's address unless the proxy is named in `trusted_proxies`). A
//! right password ends its counts; sessions and API tokens already issued keep working. A name that
//! is no agent's is checked (against [`stand_in_hash`]) and counted the same way, under
//! `?name`, so that neither the time nor the holding back tells which names exist.

use dashmap::DashMap;

use super::HallError;

/// Wrong passwords in a row from one address allowed before the sign-in is held back there.
const FREE_FAILURES: u32 = 5;
/// Wrong passwords in a row from all addresses allowed before the agent is held back everywhere.
const AGENT_FREE_FAILURES: u32 = 50;
/// Wrong passwords in a row from one address, whatever the names, before that address is held
/// back: one place trying many names (or names that are no agent's) is slowed down too.
const ADDRESS_FREE_FAILURES: u32 = 20;
const FIRST_BLOCK_MS: i64 = 60_000;
const MAX_BLOCK_MS: i64 = 15 * 60_000;
/// Past this many entries, those idle for longer than the longest hold are forgotten.
const KEPT: usize = 10_000;

/// Failures in a row, when the next attempt is allowed, and the last failure (ms).
#[derive(Default)]
struct Failures {
    count: u32,
    until: i64,
    last: i64,
}

/// An argon2 hash with the parameters of the agents' own (`Argon2::default()`), of a random
/// password nobody knows, made once: what a name that is no agent's is checked against.
pub(super) fn stand_in_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        use argon2::PasswordHasher;
        use argon2::password_hash::{SaltString, rand_core::OsRng, rand_core::RngCore};
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        argon2::Argon2::default()
            .hash_password(&secret, &SaltString::generate(&mut OsRng))
            .expect("argon2 hashes 32 bytes with default parameters")
            .to_string()
    })
}

pub(super) struct Logins {
    /// Per agent (or `?name` for a name that is no agent's) and address, per agent
    /// (`agent\0*`) and per address (`*\0address`). Entries idle for longer than the longest
    /// hold are forgotten past [`KEPT`].
    failures: DashMap<String, Failures>,
    gate: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Logins {
    pub(super) fn new() -> Self {
        Self {
            failures: DashMap::new(),
            gate: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    fn keys(agent: &str, from: &str) -> [(String, u32); 3] {
        [
            (format!("{agent}\0{from}"), FREE_FAILURES),
            (format!("{agent}\0*"), AGENT_FREE_FAILURES),
            (format!("*\0{from}"), ADDRESS_FREE_FAILURES),
        ]
    }

    /// Refuses while `agent` is held back, from `from` or everywhere, at `now_ms`.
    pub(super) fn check(&self, agent: &str, from: &str, now_ms: i64) -> Result<(), HallError> {
        let until = Self::keys(agent, from)
            .iter()
            .filter_map(|(key, _)| self.failures.get(key).map(|f| f.until))
            .max();
        match until {
            Some(until) if until > now_ms => Err(HallError::TooManyAttempts {
                retry_secs: ((until - now_ms) as u64).div_ceil(1000),
            }),
            _ => Ok(()),
        }
    }

    /// The one permit to check a password; held while it is checked.
    pub(super) async fn permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.gate
            .clone()
            .acquire_owned()
            .await
            .expect("the gate is never closed")
    }

    pub(super) fn failed(&self, agent: &str, from: &str, now_ms: i64) {
        if self.failures.len() >= KEPT {
            self.failures
                .retain(|_, f| f.until > now_ms || f.last > now_ms - MAX_BLOCK_MS);
        }
        for (key, free) in Self::keys(agent, from) {
            let mut entry = self.failures.entry(key).or_default();
            entry.count += 1;
            entry.last = now_ms;
            if entry.count >= free {
                let doublings = (entry.count - free).min(10);
                entry.until = now_ms + (FIRST_BLOCK_MS << doublings).min(MAX_BLOCK_MS);
            }
        }
    }

    pub(super) fn succeeded(&self, agent: &str, from: &str) {
        for (key, _) in Self::keys(agent, from) {
            self.failures.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_hold_back_an_agent_for_longer_each_time_until_a_success() {
        let logins = Logins::new();
        for _ in 0..FREE_FAILURES - 1 {
            logins.failed("a", "x", 0);
            logins.check("a", "x", 0).unwrap();
        }
        logins.failed("a", "x", 0);
        let Err(HallError::TooManyAttempts { retry_secs }) = logins.check("a", "x", 0) else {
            panic!("not held back");
        };
        assert_eq!(retry_secs, 60);
        logins.check("b", "x", 0).unwrap();
        logins.check("a", "y", 0).unwrap();
        logins.check("a", "x", 60_000).unwrap();
        logins.failed("a", "x", 60_000);
        assert!(logins.check("a", "x", 179_000).is_err(), "two minutes now");
        logins.check("a", "x", 180_000).unwrap();
        for _ in 0..20 {
            logins.failed("a", "x", 0);
        }
        let Err(HallError::TooManyAttempts { retry_secs }) = logins.check("a", "x", 0) else {
            panic!("not held back");
        };
        assert_eq!(retry_secs, 15 * 60, "at most a quarter of an hour");
        logins.succeeded("a", "x");
        logins.check("a", "x", 0).unwrap();
    }

    #[test]
    fn many_addresses_do_not_buy_many_guesses() {
        let logins = Logins::new();
        for i in 0..AGENT_FREE_FAILURES {
            let from = format!("10.0.{}.{}", i / 256, i % 256);
            logins.check("a", &from, 0).unwrap();
            logins.failed("a", &from, 0);
        }
        assert!(
            logins.check("a", "10.9.9.9", 0).is_err(),
            "held back everywhere"
        );
        logins.check("b", "10.9.9.9", 0).unwrap();
    }

    #[test]
    fn many_names_do_not_buy_many_guesses() {
        let logins = Logins::new();
        for i in 0..ADDRESS_FREE_FAILURES {
            let name = format!("?guess{i}");
            logins.check(&name, "x", 0).unwrap();
            logins.failed(&name, "x", 0);
        }
        assert!(
            logins.check("?another", "x", 0).is_err(),
            "the address is held back"
        );
        assert!(logins.check("a", "x", 0).is_err(), "for every name");
        logins.check("a", "y", 0).unwrap();
    }
}
