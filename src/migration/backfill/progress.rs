//! Live progress (bars on a terminal, lines elsewhere) and the shared throttle.

use super::*;

/// Live counters of one table (for progress).
#[derive(Default)]
pub(super) struct Live {
    pub(super) scanned: AtomicI64,
    pub(super) loaded: AtomicI64,
    pub(super) quarantined: AtomicI64,
    pub(super) total: AtomicI64,
    pub(super) started: std::sync::Mutex<Option<Instant>>,
    /// Seconds the table took, once done.
    pub(super) finished: std::sync::Mutex<Option<f64>>,
    pub(super) done: std::sync::atomic::AtomicBool,
}

/// Reads a live counter (the inherent `load`, not diesel's `RunQueryDsl::load`).
pub(super) fn atomic_get(a: &AtomicI64) -> i64 {
    AtomicI64::load(a, Ordering::Relaxed)
}

/// A token bucket shared by the segments; the rate is re-read from `backfill_runs`.
pub(super) struct Throttle {
    pub(super) rate_bits: AtomicU64,
    pub(super) next: tokio::sync::Mutex<Instant>,
}

impl Throttle {
    pub(super) fn new(rate: f64) -> Self {
        Self {
            rate_bits: AtomicU64::new(rate.to_bits()),
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    pub(super) fn set(&self, rate: f64) {
        self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
    }

    /// Waits until `n` more items fit under the rate.
    pub(super) async fn acquire(&self, n: usize) {
        let rate = f64::from_bits(AtomicU64::load(&self.rate_bits, Ordering::Relaxed));
        if rate <= 0.0 || n == 0 {
            return;
        }
        let at = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            // No credit for idle time beyond one second's worth.
            let start = (*next).max(now.checked_sub(Duration::from_secs(1)).unwrap_or(now));
            // At most an hour per batch, whatever rate was set (a tiny rate must not overflow).
            *next = start
                + Duration::try_from_secs_f64(n as f64 / rate)
                    .unwrap_or(Duration::from_secs(3600))
                    .min(Duration::from_secs(3600));
            start
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Draws progress until told to stop, then once more.
pub(super) async fn show_progress(
    live: Arc<Vec<(Entity, Live)>>,
    style: ProgressStyle,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if style == ProgressStyle::None {
        return;
    }
    let tick = match style {
        ProgressStyle::Bars => Duration::from_millis(250),
        _ => every,
    };
    let mut drawn = false;
    loop {
        let stopping = tokio::time::timeout(tick, stop.changed()).await.is_ok();
        let lines: Vec<String> = live
            .iter()
            .map(|(e, l)| progress_line(*e, l, style))
            .collect();
        let mut err = std::io::stderr().lock();
        match style {
            ProgressStyle::Bars => {
                if drawn {
                    let _ = write!(err, "\x1b[{}A", lines.len());
                }
                for line in &lines {
                    let _ = writeln!(err, "\x1b[2K{line}");
                }
                drawn = true;
            }
            _ => {
                for (line, (_, l)) in lines.iter().zip(live.iter()) {
                    let started = l.started.lock().expect("not poisoned").is_some();
                    if started
                        && (!std::sync::atomic::AtomicBool::load(&l.done, Ordering::Relaxed)
                            || stopping)
                    {
                        let _ = writeln!(err, "backfill {line}");
                    }
                }
            }
        }
        if stopping {
            return;
        }
    }
}

pub(super) fn progress_line(entity: Entity, l: &Live, style: ProgressStyle) -> String {
    let scanned = atomic_get(&l.scanned);
    // DescribeTable's count lags (AWS refreshes it every ~6 h; some emulators say 0):
    // without one there is no percentage or ETA, only counts and rate.
    let known = atomic_get(&l.total) > 0;
    let total = atomic_get(&l.total).max(scanned);
    let elapsed = match *l.finished.lock().expect("not poisoned") {
        Some(secs) => secs,
        None => l
            .started
            .lock()
            .expect("not poisoned")
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or(0.0),
    };
    let done = std::sync::atomic::AtomicBool::load(&l.done, Ordering::Relaxed);
    let rate = if elapsed > 0.0 {
        scanned as f64 / elapsed
    } else {
        0.0
    };
    let eta = if done {
        "done".to_owned()
    } else if !known {
        "total unknown".to_owned()
    } else if rate > 0.0 && total > scanned {
        format!("ETA {:.0}s", (total - scanned) as f64 / rate)
    } else if elapsed == 0.0 {
        "waiting".to_owned()
    } else {
        "finishing".to_owned()
    };
    let frac = if done {
        1.0
    } else if known {
        scanned as f64 / total as f64
    } else {
        0.0
    };
    let of = if known {
        format!("/{total}")
    } else {
        String::new()
    };
    let counts = format!(
        "{scanned}{of} scanned, {} loaded, {} quarantined, {rate:.0}/s, {eta}",
        atomic_get(&l.loaded),
        atomic_get(&l.quarantined),
    );
    let name = table_name(entity);
    if style == ProgressStyle::Bars {
        let width = 30;
        let filled = ((frac * width as f64) as usize).min(width);
        format!(
            "{name:<17}[{}{}] {:>3.0}% {counts}",
            "#".repeat(filled),
            ".".repeat(width - filled),
            frac * 100.0
        )
    } else {
        format!("{name}: {:.0}% {counts}", frac * 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    pub(super) async fn the_throttle_spaces_items_at_the_rate() {
        let t = Throttle::new(1000.0);
        let start = Instant::now();
        for _ in 0..5 {
            t.acquire(100).await;
        }
        // 500 items at 1,000/s: the fifth batch may start 0.4 s in.
        assert!(
            start.elapsed() >= Duration::from_millis(350),
            "{:?}",
            start.elapsed()
        );
        t.set(0.0);
        let start = Instant::now();
        t.acquire(1_000_000).await;
        assert!(start.elapsed() < Duration::from_millis(50));
    }
}
