//! Bandwidth limit of a data connection (`replication.bandwidth_limit` of a VFS): a token bucket.
//!
//! The bucket fills at the configured rate and holds at most [`BURST`] worth of it (100 ms), so
//! an idle connection cannot save up for a long burst. Taking more than the bucket holds (a frame
//! is up to 8 MiB) is allowed: the bucket goes into debt and the taker sleeps until the debt is
//! paid, so over any stretch longer than a frame the rate holds. The writer takes the bytes of
//! each frame (header and payload) before writing it.
//!
//! Time is [`tokio::time`]'s, so tests run it paused.
use std::time::Duration;

use tokio::time::Instant;

/// How much of the rate the bucket holds: 100 ms worth.
pub const BURST: Duration = Duration::from_millis(100);

/// A token bucket; `None` means unlimited.
#[derive(Debug)]
pub struct Throttle {
    limit: Option<Limit>,
}

#[derive(Debug)]
struct Limit {
    /// Bytes per second, at least 1.
    rate: f64,
    /// Most tokens the bucket holds.
    burst: f64,
    /// Tokens now; negative is debt.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

impl Throttle {
    /// A throttle of `bytes_per_s` (unlimited when `None`; 0 counts as 1 byte/s, the
    /// configuration refuses it anyway). The bucket starts full.
    pub fn new(bytes_per_s: Option<u64>) -> Throttle {
        let limit = bytes_per_s.map(|rate| {
            let rate = rate.max(1) as f64;
            let burst = rate * BURST.as_secs_f64();
            Limit {
                rate,
                burst,
                tokens: burst,
                at: Instant::now(),
            }
        });
        Throttle { limit }
    }

    /// The limit in bytes per second, if any.
    pub fn rate(&self) -> Option<u64> {
        self.limit.as_ref().map(|l| l.rate as u64)
    }

    /// Takes `bytes` from the bucket, sleeping as long as the rate requires; returns at once
    /// when unlimited.
    pub async fn take(&mut self, bytes: u64) {
        let Some(limit) = &mut self.limit else {
            return;
        };
        let now = Instant::now();
        let refill = now.saturating_duration_since(limit.at).as_secs_f64() * limit.rate;
        limit.tokens = (limit.tokens + refill).min(limit.burst);
        limit.at = now;
        limit.tokens -= bytes as f64;
        if limit.tokens < 0.0 {
            // The debt is paid by the refill of the time slept, counted at the next take.
            let wait = Duration::from_secs_f64(-limit.tokens / limit.rate);
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Sends `total` bytes in `frame`-sized takes and returns the (virtual) time it took.
    async fn send(throttle: &mut Throttle, total: u64, frame: u64) -> Duration {
        let start = Instant::now();
        let mut sent = 0;
        while sent < total {
            throttle.take(frame).await;
            sent += frame;
        }
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn holds_the_rate_over_many_small_frames() {
        let mut throttle = Throttle::new(Some(10 * MIB));
        // 100 MiB at 10 MiB/s: 10 s, less the 100 ms burst the bucket starts with.
        let took = send(&mut throttle, 100 * MIB, 64 << 10).await;
        assert!(
            took >= Duration::from_millis(9_890) && took <= Duration::from_millis(9_910),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn frames_larger_than_the_burst_go_into_debt_and_still_hold_the_rate() {
        let mut throttle = Throttle::new(Some(MIB));
        // 8 MiB frames at 1 MiB/s: each one costs 8 s.
        let took = send(&mut throttle, 32 * MIB, 8 * MIB).await;
        // The last frame's debt is slept off before its take returns.
        assert!(
            took >= Duration::from_millis(31_890) && took <= Duration::from_millis(32_010),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_saves_up_no_more_than_the_burst() {
        let mut throttle = Throttle::new(Some(10 * MIB));
        tokio::time::sleep(Duration::from_secs(60)).await;
        // One burst (1 MiB) is free, the next 10 MiB take a second.
        let took = send(&mut throttle, 11 * MIB, 64 << 10).await;
        assert!(
            took >= Duration::from_millis(990) && took <= Duration::from_millis(1_010),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_sleeps() {
        let mut throttle = Throttle::new(None);
        assert_eq!(throttle.rate(), None);
        assert_eq!(send(&mut throttle, 1 << 40, 8 * MIB).await, Duration::ZERO);
    }
}
