//! This replica's share of the role's `maxMessagesPerSecond`: a token bucket whose rate comes
//! from `CQRS_RATE_SHARE_FILE` (re-read every 2 s, so it follows scaling without a restart).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::watch;

/// How often the share file is re-read.
pub const REREAD: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Bucket {
    rate: Option<f64>,
    tokens: f64,
    last: Instant,
}

/// Hands out permits to receive messages at most at the current rate.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Mutex<Bucket>,
    file: Option<PathBuf>,
}

/// Parses a share file's content: a positive decimal, or empty for "no limit".
pub fn parse_share(text: &str) -> Result<Option<f64>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(Some(rate)),
        _ => Err(format!("{text:?} is not a positive number")),
    }
}

impl RateLimiter {
    /// A limiter starting at `initial` messages per second (`None`: unlimited), following
    /// `file` when given.
    pub fn new(initial: Option<f64>, file: Option<PathBuf>) -> Self {
        let rate = match &file {
            Some(path) => read_share(path).unwrap_or(initial),
            None => initial,
        };
        Self {
            bucket: Mutex::new(Bucket {
                rate,
                tokens: rate.map_or(0.0, |r| r.min(1.0)),
                last: Instant::now(),
            }),
            file,
        }
    }

    /// The current rate.
    pub fn rate(&self) -> Option<f64> {
        self.lock().rate
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.bucket.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads the share file (no-op without one). Keeps the old rate when it is unreadable.
    pub fn reload(&self) {
        let Some(path) = &self.file else { return };
        match read_share(path) {
            Ok(rate) => {
                let mut b = self.lock();
                if b.rate != rate {
                    tracing::info!(?rate, "rate share changed");
                    b.rate = rate;
                    b.tokens = b.tokens.min(rate.unwrap_or(0.0).max(1.0));
                }
            }
            Err(e) => tracing::warn!(file = %path.display(), "keeping the current rate share: {e}"),
        }
    }

    /// Waits until at least one message may be received; returns how many (at most `max`),
    /// or 0 when `shutdown` fires first.
    pub async fn acquire(&self, max: u32, shutdown: &mut watch::Receiver<bool>) -> u32 {
        loop {
            if *shutdown.borrow() {
                return 0;
            }
            let wait = {
                let mut b = self.lock();
                let Some(rate) = b.rate else { return max };
                let now = Instant::now();
                let capacity = rate.max(1.0);
                b.tokens =
                    (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(capacity);
                b.last = now;
                if b.tokens >= 1.0 {
                    let n = (b.tokens.floor() as u32).min(max).max(1);
                    b.tokens -= f64::from(n);
                    return n;
                }
                Duration::from_secs_f64(((1.0 - b.tokens) / rate).min(1.0))
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Gives back permits that were not used (fewer messages received than asked for).
    pub fn refund(&self, n: u32) {
        let mut b = self.lock();
        if let Some(rate) = b.rate {
            b.tokens = (b.tokens + f64::from(n)).min(rate.max(1.0));
        }
    }
}

fn read_share(path: &Path) -> Result<Option<f64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    parse_share(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_files_hold_a_positive_number_or_nothing() {
        assert_eq!(parse_share("33.333\n"), Ok(Some(33.333)));
        assert_eq!(parse_share(""), Ok(None));
        assert!(parse_share("-1").is_err());
        assert!(parse_share("lots").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn permits_arrive_at_the_rate() {
        let limiter = RateLimiter::new(Some(10.0), None);
        let (_tx, mut rx) = watch::channel(false);
        let start = tokio::time::Instant::now();
        let mut got = 0;
        while got < 50 {
            got += limiter.acquire(32, &mut rx).await;
        }
        // 50 permits at 10/s with a burst of at most 10: at least ~4 s of (paused) time.
        assert!(
            start.elapsed() >= Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn unlimited_hands_out_whole_batches_and_shutdown_stops_waiting() {
        let limiter = RateLimiter::new(None, None);
        let (tx, mut rx) = watch::channel(false);
        assert_eq!(limiter.acquire(32, &mut rx).await, 32);
        tx.send(true).unwrap();
        assert_eq!(
            RateLimiter::new(Some(0.001), None)
                .acquire(32, &mut rx)
                .await,
            0
        );
    }

    #[test]
    fn the_share_file_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("share");
        std::fs::write(&file, "5").unwrap();
        let limiter = RateLimiter::new(Some(100.0), Some(file.clone()));
        assert_eq!(limiter.rate(), Some(5.0));
        std::fs::write(&file, "").unwrap();
        limiter.reload();
        assert_eq!(limiter.rate(), None);
        std::fs::write(&file, "garbage").unwrap();
        limiter.reload();
        assert_eq!(
            limiter.rate(),
            None,
            "an unreadable file keeps the current rate"
        );
    }
}
