//! The per-tenant ingest rate limiter: a token bucket per tenant, in memory, per replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::domain::TenantId;
use crate::limits::LimitsError;

/// How many tenants a limiter tracks at most before it evicts the stalest one.
pub const DEFAULT_MAX_TRACKED_TENANTS: usize = 65_536;

/// Room for floating-point rounding when comparing tokens, so that a bucket refilled to
/// exactly one token in theory is not refused for holding 0.999_999_999_999.
const EPSILON: f64 = 1e-9;

/// Shortest and longest pause between two sweeps of idle tenants.
const SWEEP_INTERVAL: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

/// Checks that a rate and a burst make a working bucket.
pub(super) fn validate(rate: f64, burst: u32) -> Result<(), LimitsError> {
    if !rate.is_finite() || rate <= 0.0 {
        return Err(LimitsError::invalid(
            "ingest_rate_per_tenant",
            "needs a finite rate above zero calls per second",
        ));
    }
    if burst == 0 {
        return Err(LimitsError::invalid(
            "ingest_rate_per_tenant",
            "needs a burst of at least 1 call",
        ));
    }
    Ok(())
}

/// Limits how many calls each tenant ingests per second, with a token bucket per tenant.
///
/// A bucket holds at most `burst` tokens and gains `rate` tokens per second; a request for `n`
/// calls takes `n` tokens, or is refused with the time after which the bucket will hold them.
/// A request for more calls than the burst is let through when the bucket is full (it empties
/// it), so a batch larger than the burst is slowed, never refused forever.
///
/// Memory is bounded: a bucket that has refilled is the same as no bucket, so idle tenants are
/// dropped by a periodic sweep; beyond [`DEFAULT_MAX_TRACKED_TENANTS`] (or
/// [`IngestRateLimiter::with_max_tenants`]) the least recently seen tenant is forgotten, which
/// gives it a full bucket again.
///
/// Cheap to clone: clones share their buckets.
#[derive(Debug, Clone)]
pub struct IngestRateLimiter {
    /// `None` lets everything through.
    buckets: Option<Arc<Buckets>>,
}

#[derive(Debug)]
struct Buckets {
    /// Tokens gained per second.
    rate: f64,
    /// Tokens a full bucket holds.
    burst: f64,
    max_tenants: usize,
    /// How often idle tenants are swept out.
    sweep_interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<TenantId, Bucket>,
    next_sweep: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl IngestRateLimiter {
    /// A limiter of `rate_per_second` calls per second with bursts of `burst` calls, tracking
    /// at most [`DEFAULT_MAX_TRACKED_TENANTS`] tenants.
    pub fn new(rate_per_second: f64, burst: u32) -> Result<Self, LimitsError> {
        Self::with_max_tenants(rate_per_second, burst, DEFAULT_MAX_TRACKED_TENANTS)
    }

    /// [`IngestRateLimiter::new`] tracking at most `max_tenants` tenants (at least 1).
    pub fn with_max_tenants(
        rate_per_second: f64,
        burst: u32,
        max_tenants: usize,
    ) -> Result<Self, LimitsError> {
        validate(rate_per_second, burst)?;
        let burst = f64::from(burst);
        let refill = Duration::try_from_secs_f64(burst / rate_per_second).unwrap_or(Duration::MAX);
        Ok(Self {
            buckets: Some(Arc::new(Buckets {
                rate: rate_per_second,
                burst,
                max_tenants: max_tenants.max(1),
                sweep_interval: refill.clamp(SWEEP_INTERVAL.0, SWEEP_INTERVAL.1),
                state: Mutex::new(State::default()),
            })),
        })
    }

    /// A limiter that lets every request through.
    pub fn unlimited() -> Self {
        Self { buckets: None }
    }

    /// The limiter of [`LimitSettings::ingest_rate_per_tenant`](super::LimitSettings): `None`
    /// is [`IngestRateLimiter::unlimited`].
    pub fn from_settings(rate: Option<(f64, u32)>) -> Result<Self, LimitsError> {
        match rate {
            Some((rate, burst)) => Self::new(rate, burst),
            None => Ok(Self::unlimited()),
        }
    }

    /// Takes `calls` tokens from `tenant`'s bucket now, or says how long to wait before
    /// retrying.
    pub fn check(&self, tenant: &TenantId, calls: u32) -> Result<(), Duration> {
        self.check_at(tenant, calls, Instant::now())
    }

    /// [`IngestRateLimiter::check`] at a given instant (the clock is injected for tests).
    /// An instant earlier than one already seen refills nothing.
    pub fn check_at(&self, tenant: &TenantId, calls: u32, now: Instant) -> Result<(), Duration> {
        let Some(buckets) = &self.buckets else {
            return Ok(());
        };
        if calls == 0 {
            return Ok(());
        }
        let mut state = buckets.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.next_sweep.is_none_or(|next| now >= next) {
            buckets.sweep(&mut state, now);
        }
        if !state.buckets.contains_key(tenant) {
            if state.buckets.len() >= buckets.max_tenants {
                buckets.make_room(&mut state, now);
            }
            state.buckets.insert(
                tenant.clone(),
                Bucket {
                    tokens: buckets.burst,
                    updated: now,
                },
            );
        }
        let Some(bucket) = state.buckets.get_mut(tenant) else {
            // Just inserted; never reached.
            return Ok(());
        };
        buckets.refill(bucket, now);
        // A request larger than the burst waits for a full bucket and empties it.
        let cost = f64::from(calls).min(buckets.burst);
        if bucket.tokens + EPSILON >= cost {
            bucket.tokens = (bucket.tokens - cost).max(0.0);
            Ok(())
        } else {
            Err(buckets.time_to_gain(cost - bucket.tokens))
        }
    }

    /// The calls a full bucket holds; `None` when unlimited.
    pub fn burst(&self) -> Option<u32> {
        // The burst came from a u32.
        self.buckets
            .as_ref()
            .map(|buckets| buckets.burst.max(1.0) as u32)
    }

    /// How many tenants have a bucket now (for tests and metrics).
    pub fn tracked_tenants(&self) -> usize {
        self.buckets.as_ref().map_or(0, |buckets| {
            buckets
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .buckets
                .len()
        })
    }
}

impl Buckets {
    /// Adds the tokens gained since the bucket was last updated.
    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated);
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        bucket.updated = bucket.updated.max(now);
    }

    /// Whether the bucket has refilled by `now`, and so is the same as no bucket.
    fn is_full(&self, bucket: &Bucket, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(bucket.updated);
        bucket.tokens + elapsed.as_secs_f64() * self.rate + EPSILON >= self.burst
    }

    /// Forgets every tenant whose bucket has refilled.
    fn sweep(&self, state: &mut State, now: Instant) {
        state
            .buckets
            .retain(|_tenant, bucket| !self.is_full(bucket, now));
        state.next_sweep = now.checked_add(self.sweep_interval);
    }

    /// Frees one place at least: idle tenants first, else the least recently seen one.
    fn make_room(&self, state: &mut State, now: Instant) {
        self.sweep(state, now);
        if state.buckets.len() < self.max_tenants {
            return;
        }
        let stalest = state
            .buckets
            .iter()
            .min_by_key(|(_tenant, bucket)| bucket.updated)
            .map(|(tenant, _bucket)| tenant.clone());
        if let Some(tenant) = stalest {
            tracing::debug!(tenant = %tenant.as_str(), "rate limiter full; forgetting the stalest tenant");
            state.buckets.remove(&tenant);
        }
    }

    /// How long until a bucket gains `tokens`, rounded up to the millisecond (at least 1 ms).
    fn time_to_gain(&self, tokens: f64) -> Duration {
        // A nanosecond of slack keeps rounding noise (350.000_000_000_000_06 ms) from adding a
        // millisecond; `as` saturates, so an absurdly long wait becomes u64::MAX milliseconds.
        let millis = (tokens / self.rate * 1000.0 - 1e-6).ceil() as u64;
        Duration::from_millis(millis.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name).expect("valid tenant")
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// 2 calls per second, bursts of 4.
    fn limiter() -> IngestRateLimiter {
        IngestRateLimiter::new(2.0, 4).expect("valid limiter")
    }

    #[test]
    fn a_full_bucket_allows_the_burst_then_refuses_with_the_refill_time() {
        let limiter = limiter();
        let acme = tenant("acme");
        let t0 = Instant::now();
        assert_eq!(limiter.check_at(&acme, 3, t0), Ok(()));
        assert_eq!(limiter.check_at(&acme, 1, t0), Ok(()));
        // Empty: one token takes 1/2 s to come back.
        assert_eq!(limiter.check_at(&acme, 1, t0), Err(ms(500)));
        // Three tokens take 1.5 s.
        assert_eq!(limiter.check_at(&acme, 3, t0), Err(ms(1500)));
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let limiter = limiter();
        let acme = tenant("acme");
        let t0 = Instant::now();
        assert_eq!(limiter.check_at(&acme, 4, t0), Ok(()));
        // After 250 ms half a token is back: one call needs 250 ms more.
        assert_eq!(limiter.check_at(&acme, 1, t0 + ms(250)), Err(ms(250)));
        // After 500 ms one token is back.
        assert_eq!(limiter.check_at(&acme, 1, t0 + ms(500)), Ok(()));
        assert_eq!(limiter.check_at(&acme, 1, t0 + ms(500)), Err(ms(500)));
        // After 1.5 s in all, two more tokens: 2 calls pass, a third does not.
        assert_eq!(limiter.check_at(&acme, 2, t0 + ms(1500)), Ok(()));
        assert_eq!(limiter.check_at(&acme, 1, t0 + ms(1500)), Err(ms(500)));
    }

    #[test]
    fn a_refill_never_exceeds_the_burst() {
        let limiter = limiter();
        let acme = tenant("acme");
        let t0 = Instant::now();
        assert_eq!(limiter.check_at(&acme, 1, t0), Ok(()));
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(limiter.check_at(&acme, 4, later), Ok(()));
        assert_eq!(limiter.check_at(&acme, 1, later), Err(ms(500)));
    }

    #[test]
    fn a_request_larger_than_the_burst_waits_for_a_full_bucket() {
        let limiter = limiter();
        let acme = tenant("acme");
        let t0 = Instant::now();
        // Full: 10 calls pass and empty the bucket.
        assert_eq!(limiter.check_at(&acme, 10, t0), Ok(()));
        assert_eq!(limiter.check_at(&acme, 1, t0), Err(ms(500)));
        // With 2 tokens, 10 calls wait for the 2 missing up to the burst: 1 s.
        assert_eq!(limiter.check_at(&acme, 10, t0 + ms(1000)), Err(ms(1000)));
        assert_eq!(limiter.check_at(&acme, 10, t0 + ms(2000)), Ok(()));
    }

    #[test]
    fn tenants_have_their_own_buckets() {
        let limiter = limiter();
        let t0 = Instant::now();
        assert_eq!(limiter.check_at(&tenant("acme"), 4, t0), Ok(()));
        assert_eq!(limiter.check_at(&tenant("acme"), 1, t0), Err(ms(500)));
        assert_eq!(limiter.check_at(&tenant("globex"), 4, t0), Ok(()));
        assert_eq!(limiter.tracked_tenants(), 2);
    }

    #[test]
    fn zero_calls_and_the_unlimited_limiter_always_pass() {
        let limiter = limiter();
        let acme = tenant("acme");
        let t0 = Instant::now();
        assert_eq!(limiter.check_at(&acme, 4, t0), Ok(()));
        assert_eq!(limiter.check_at(&acme, 0, t0), Ok(()));

        let unlimited = IngestRateLimiter::from_settings(None).expect("no settings to refuse");
        for _ in 0..1000 {
            assert_eq!(unlimited.check_at(&acme, u32::MAX, t0), Ok(()));
        }
        assert_eq!(unlimited.tracked_tenants(), 0);
    }

    #[test]
    fn broken_settings_are_refused() {
        assert!(IngestRateLimiter::new(0.0, 4).is_err());
        assert!(IngestRateLimiter::new(-1.0, 4).is_err());
        assert!(IngestRateLimiter::new(f64::INFINITY, 4).is_err());
        assert!(IngestRateLimiter::new(f64::NAN, 4).is_err());
        assert!(IngestRateLimiter::new(2.0, 0).is_err());
        assert!(IngestRateLimiter::from_settings(Some((2000.0, 4000))).is_ok());
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing() {
        let limiter = limiter();
        let acme = tenant("acme");
        let t0 = Instant::now() + Duration::from_secs(10);
        assert_eq!(limiter.check_at(&acme, 4, t0), Ok(()));
        assert_eq!(limiter.check_at(&acme, 1, t0 - ms(5000)), Err(ms(500)));
        assert_eq!(limiter.check_at(&acme, 1, t0 + ms(500)), Ok(()));
    }

    #[test]
    fn idle_tenants_are_forgotten_once_their_bucket_has_refilled() {
        // 2/s with bursts of 4 refill in 2 s: the sweep runs every 2 s.
        let limiter = limiter();
        let t0 = Instant::now();
        assert_eq!(limiter.check_at(&tenant("acme"), 4, t0), Ok(()));
        assert_eq!(limiter.check_at(&tenant("globex"), 1, t0), Ok(()));
        assert_eq!(limiter.tracked_tenants(), 2);
        // At 1.9 s no sweep is due yet.
        assert_eq!(
            limiter.check_at(&tenant("initech"), 4, t0 + ms(1900)),
            Ok(())
        );
        assert_eq!(limiter.tracked_tenants(), 3);
        // At 2 s acme and globex have refilled and are swept; initech (emptied at 1.9 s) stays,
        // and umbrella is new.
        assert_eq!(
            limiter.check_at(&tenant("umbrella"), 1, t0 + ms(2000)),
            Ok(())
        );
        assert_eq!(limiter.tracked_tenants(), 2);
        // Forgetting acme lost nothing: its bucket was full anyway.
        assert_eq!(limiter.check_at(&tenant("acme"), 4, t0 + ms(2000)), Ok(()));
        assert_eq!(
            limiter.check_at(&tenant("acme"), 1, t0 + ms(2000)),
            Err(ms(500))
        );
    }

    #[test]
    fn beyond_the_tenant_cap_the_stalest_tenant_is_forgotten() {
        let limiter = IngestRateLimiter::with_max_tenants(2.0, 4, 2).expect("valid limiter");
        let t0 = Instant::now();
        assert_eq!(limiter.check_at(&tenant("acme"), 4, t0), Ok(()));
        assert_eq!(limiter.check_at(&tenant("globex"), 4, t0 + ms(100)), Ok(()));
        // No bucket has refilled: acme, seen last at t0, is forgotten for initech.
        assert_eq!(
            limiter.check_at(&tenant("initech"), 4, t0 + ms(200)),
            Ok(())
        );
        assert_eq!(limiter.tracked_tenants(), 2);
        // globex is still tracked: 250 ms after emptying it holds half a token.
        assert_eq!(
            limiter.check_at(&tenant("globex"), 1, t0 + ms(350)),
            Err(ms(250))
        );
        // acme starts full again and pushes out initech (seen at 200 ms, globex at 350 ms).
        assert_eq!(limiter.check_at(&tenant("acme"), 4, t0 + ms(400)), Ok(()));
        assert_eq!(
            limiter.check_at(&tenant("initech"), 4, t0 + ms(400)),
            Ok(())
        );
        assert_eq!(limiter.tracked_tenants(), 2);
        // ... which pushed out globex, so acme (seen at 400 ms) is still empty.
        assert_eq!(
            limiter.check_at(&tenant("acme"), 1, t0 + ms(400)),
            Err(ms(500))
        );
    }

    #[test]
    fn retry_delays_round_up_to_the_millisecond() {
        // 3 calls per second: one token takes 333.33 ms, told as 334 ms.
        let limiter = IngestRateLimiter::new(3.0, 1).expect("valid limiter");
        let acme = tenant("acme");
        let t0 = Instant::now();
        assert_eq!(limiter.check_at(&acme, 1, t0), Ok(()));
        assert_eq!(limiter.check_at(&acme, 1, t0), Err(ms(334)));
    }

    #[test]
    fn clones_share_their_buckets() {
        let limiter = limiter();
        let clone = limiter.clone();
        let acme = tenant("acme");
        let t0 = Instant::now();
        assert_eq!(limiter.check_at(&acme, 4, t0), Ok(()));
        assert_eq!(clone.check_at(&acme, 1, t0), Err(ms(500)));
    }
}
