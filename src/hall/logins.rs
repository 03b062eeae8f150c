//! Sign-in throttling. Each password check costs ~20 ms of a core and 19 MiB (argon2), on the
//! same Rayon pool that decrypts bids and checks phones' answers: unthrottled, anyone could guess
//! an agent's password without end, or stall a live opening by sending sign-ins. So checks run
//! one at a time (they never hold more than one pool thread), and after [`FREE_FAILURES`] wrong
//! passwords in a row for one agent from one address, that agent's sign-in from that address is
//! refused without a check for a time that doubles with each further failure (one minute, up to
//! [`MAX_BLOCK_MS`]). Counted per address, so that whoever guesses does not lock the agent out
//! everywhere (behind a reverse proxy every client has the proxy's address: then it is per
//! agent). A right password ends it; sessions and API tokens already issued keep working.

use dashmap::DashMap;

use super::HallError;

/// Wrong passwords in a row allowed before the sign-in is held back.
const FREE_FAILURES: u32 = 5;
const FIRST_BLOCK_MS: i64 = 60_000;
const MAX_BLOCK_MS: i64 = 15 * 60_000;
/// Past this many entries, those no longer held back are forgotten.
const KEPT: usize = 10_000;

pub(super) struct Logins {
    /// Per existing agent and address (unknown names are refused before any check): failures
    /// in a row and when the next attempt is allowed. Kept under [`KEPT`] entries.
    failures: DashMap<String, (u32, i64)>,
    gate: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Logins {
    pub(super) fn new() -> Self {
        Self {
            failures: DashMap::new(),
            gate: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// Refuses while `key` (an agent and an address) is held back at `now_ms`.
    pub(super) fn check(&self, key: &str, now_ms: i64) -> Result<(), HallError> {
        match self.failures.get(key).map(|f| f.1) {
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

    pub(super) fn failed(&self, key: &str, now_ms: i64) {
        if self.failures.len() >= KEPT {
            self.failures.retain(|_, f| f.1 > now_ms);
        }
        let mut entry = self.failures.entry(key.to_owned()).or_insert((0, 0));
        entry.0 += 1;
        if entry.0 >= FREE_FAILURES {
            let doublings = (entry.0 - FREE_FAILURES).min(10);
            entry.1 = now_ms + (FIRST_BLOCK_MS << doublings).min(MAX_BLOCK_MS);
        }
    }

    pub(super) fn succeeded(&self, key: &str) {
        self.failures.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_hold_back_an_agent_for_longer_each_time_until_a_success() {
        let logins = Logins::new();
        for _ in 0..FREE_FAILURES - 1 {
            logins.failed("a", 0);
            logins.check("a", 0).unwrap();
        }
        logins.failed("a", 0);
        let Err(HallError::TooManyAttempts { retry_secs }) = logins.check("a", 0) else {
            panic!("not held back");
        };
        assert_eq!(retry_secs, 60);
        logins.check("b", 0).unwrap();
        logins.check("a", 60_000).unwrap();
        logins.failed("a", 60_000);
        assert!(
            logins.check("a", 60_000 + 119_000).is_err(),
            "two minutes now"
        );
        logins.check("a", 60_000 + 120_000).unwrap();
        for _ in 0..20 {
            logins.failed("a", 0);
        }
        let Err(HallError::TooManyAttempts { retry_secs }) = logins.check("a", 0) else {
            panic!("not held back");
        };
        assert_eq!(retry_secs, 15 * 60, "at most a quarter of an hour");
        logins.succeeded("a");
        logins.check("a", 0).unwrap();
    }
}
