//! `max_bandwidth`: a token bucket (governor) shared by every upload. A request for `n`
//! bytes waits until the bucket allows them, one second's worth at a time, so the average
//! rate over a few seconds stays under the cap however large a part is.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Tokens are KiB, so a u32 quota reaches 4 TiB/s.
const UNIT: u64 = 1024;

#[derive(Debug)]
pub struct Pacer {
    limiter: Option<DefaultDirectRateLimiter>,
    per_second: u32,
}

impl Pacer {
    /// No cap when `bytes_per_second` is `None`.
    pub fn new(bytes_per_second: Option<u64>) -> Pacer {
        let per_second = bytes_per_second
            .map(|b| u32::try_from(b.div_ceil(UNIT)).unwrap_or(u32::MAX).max(1))
            .unwrap_or(1);
        let limiter = bytes_per_second.map(|_| {
            let rate = NonZeroU32::new(per_second).expect("at least 1");
            RateLimiter::direct(Quota::per_second(rate))
        });
        Pacer {
            limiter,
            per_second,
        }
    }

    /// Waits until `bytes` may be sent.
    pub async fn take(&self, bytes: u64) {
        let Some(limiter) = &self.limiter else {
            return;
        };
        let mut units = bytes.div_ceil(UNIT).max(1);
        while units > 0 {
            let now = units.min(u64::from(self.per_second)) as u32;
            let n = NonZeroU32::new(now).expect("positive");
            limiter
                .until_n_ready(n)
                .await
                .expect("never more than the burst");
            units -= u64::from(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn no_cap_means_no_wait() {
        let pacer = Pacer::new(None);
        let start = Instant::now();
        pacer.take(10 << 30).await;
        assert!(start.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn the_average_rate_stays_under_the_cap() {
        // 1 MiB/s; the first second's worth is available at once, the next 2 MiB take ~2 s.
        let pacer = Pacer::new(Some(1 << 20));
        let start = Instant::now();
        for _ in 0..12 {
            pacer.take(256 << 10).await;
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(1_900), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(3_500), "{elapsed:?}");
    }
}
