//! The memory bound of the output: sealed batches held in memory for the sender are capped in
//! bytes. The batcher thread blocks in [`MemoryGate::acquire`] (or spools instead, when
//! [`MemoryGate::try_acquire`] refuses); the sender releases a batch's bytes when it is done.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Bounds the bytes of sealed batches held in memory. The batcher thread blocks in
/// [`MemoryGate::acquire`]; the sender releases when a batch is done.
pub struct MemoryGate {
    limit: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

impl MemoryGate {
    pub fn new(limit: usize) -> Self {
        MemoryGate {
            limit,
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Waits until `n` more bytes fit (one batch always fits when nothing is held), or until
    /// `give_up()` says to stop waiting (shutdown), then takes them.
    pub fn acquire(&self, n: usize, give_up: impl Fn() -> bool) {
        let mut used = self.used.lock().unwrap();
        while *used > 0 && used.saturating_add(n) > self.limit && !give_up() {
            used = self
                .freed
                .wait_timeout(used, Duration::from_millis(100))
                .unwrap()
                .0;
        }
        *used += n;
    }

    /// Takes `n` bytes if they fit now (one batch always fits when nothing is held).
    pub fn try_acquire(&self, n: usize) -> bool {
        let mut used = self.used.lock().unwrap();
        if *used > 0 && used.saturating_add(n) > self.limit {
            return false;
        }
        *used += n;
        true
    }

    pub fn release(&self, n: usize) {
        let mut used = self.used.lock().unwrap();
        *used = used.saturating_sub(n);
        self.freed.notify_all();
    }

    pub fn used(&self) -> usize {
        *self.used.lock().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn memory_gate_blocks_past_the_limit_until_released() {
        let gate = Arc::new(MemoryGate::new(100));
        gate.acquire(60, || false);
        // One batch always fits when nothing else is held; a second one past the limit waits.
        let g = gate.clone();
        let waiter = std::thread::spawn(move || {
            g.acquire(60, || false);
            Instant::now()
        });
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            !waiter.is_finished(),
            "acquire must wait while 60 + 60 > 100"
        );
        let released_at = Instant::now();
        gate.release(60);
        let acquired_at = waiter.join().unwrap();
        assert!(acquired_at >= released_at);
        assert_eq!(gate.used(), 60);
    }

    #[test]
    fn memory_gate_gives_way_at_shutdown() {
        let gate = MemoryGate::new(100);
        gate.acquire(90, || false);
        gate.acquire(90, || true);
        assert_eq!(gate.used(), 180);
    }
}
