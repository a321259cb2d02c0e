//! Acknowledgements: the token an input (tail, HTTP) attaches to a chunk, and the router that
//! hands it back to that input once the chunk's lines are delivered or durably spooled (or
//! dropped as configured).

use std::collections::HashMap;

/// Acknowledgement token: once the lines of the chunk carrying it are delivered (or durably
/// spooled), input `input` hears of it. For a tail input, the file `file` may be checkpointed
/// at `offset`; for an HTTP input, `file` is the request and `offset` the chunk's number in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ack {
    pub input: u32,
    pub file: u64,
    pub offset: u64,
}

/// Routes acknowledgements of delivered batches back to the inputs that asked for them
/// (by `Ack::input`). Inputs that need acks register a handler before the pipeline starts.
///
/// A chunk that goes to several delivery lanes (outputs, or shards of one) is acknowledged
/// once every lane has delivered or durably spooled its copy: the batcher announces the
/// number of copies with [`AckRouter::expect`], and the last copy's ack goes through, as
/// `Dropped` if any copy was dropped.
#[derive(Default)]
pub struct AckRouter {
    routes: std::sync::RwLock<HashMap<u32, AckHandler>>,
    /// Acks still waiting for copies, and the worst fate seen so far.
    joins: std::sync::Mutex<HashMap<Ack, (u32, Fate)>>,
    /// Set once any ack was announced with copies, so a single-lane pipeline never locks.
    joining: std::sync::atomic::AtomicBool,
}

/// What became of the lines an [`Ack`] stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Delivered, dead-lettered (refused for good by the server) or durably spooled.
    Kept,
    /// Dropped as configured (`when_full = "drop_newest"` with a full spool).
    Dropped,
}

type AckHandler = Box<dyn Fn(Ack, Fate) + Send + Sync>;

impl AckRouter {
    pub fn register(&self, input: u32, handler: impl Fn(Ack, Fate) + Send + Sync + 'static) {
        self.routes
            .write()
            .unwrap()
            .insert(input, Box::new(handler));
    }

    /// Called once a batch's lines are delivered, dead-lettered or durably stored.
    pub fn ack(&self, acks: &[Ack]) {
        self.route(acks, Fate::Kept);
    }

    /// Called when a batch's lines were dropped as configured.
    pub fn dropped(&self, acks: &[Ack]) {
        self.route(acks, Fate::Dropped);
    }

    /// Announces that `ack` travels in `copies` batches (one per lane): it reaches its input
    /// when the last copy is acknowledged. One copy needs no announcement.
    pub fn expect(&self, ack: Ack, copies: u32) {
        if copies < 2 {
            return;
        }
        self.joining
            .store(true, std::sync::atomic::Ordering::Release);
        let mut joins = self.joins.lock().unwrap();
        // The same ack announced again while copies are out (a tailed file read again from
        // the same offset) waits for every copy of both.
        joins.entry(ack).or_insert((0, Fate::Kept)).0 += copies;
    }

    fn route(&self, acks: &[Ack], fate: Fate) {
        if acks.is_empty() {
            return;
        }
        let joining = self.joining.load(std::sync::atomic::Ordering::Acquire);
        let routes = self.routes.read().unwrap();
        for a in acks {
            let fate = if joining {
                let mut joins = self.joins.lock().unwrap();
                match joins.get_mut(a) {
                    None => fate,
                    Some((left, worst)) => {
                        *left -= 1;
                        if fate == Fate::Dropped {
                            *worst = Fate::Dropped;
                        }
                        if *left > 0 {
                            continue;
                        }
                        let worst = *worst;
                        joins.remove(a);
                        worst
                    }
                }
            } else {
                fate
            };
            if let Some(h) = routes.get(&a.input) {
                h(*a, fate);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<Vec<(Ack, Fate)>>>;

    fn router() -> (AckRouter, Seen) {
        let r = AckRouter::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        r.register(1, move |a, f| s.lock().unwrap().push((a, f)));
        (r, seen)
    }

    const A: Ack = Ack {
        input: 1,
        file: 7,
        offset: 100,
    };

    #[test]
    fn an_ack_in_several_copies_reaches_its_input_with_the_last_copy() {
        let (r, seen) = router();
        r.expect(A, 3);
        r.ack(&[A]);
        r.ack(&[A]);
        assert!(seen.lock().unwrap().is_empty());
        r.ack(&[A]);
        assert_eq!(*seen.lock().unwrap(), vec![(A, Fate::Kept)]);
        // Gone from the joins: a later ack of the same token goes straight through.
        r.ack(&[A]);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn one_dropped_copy_makes_the_whole_ack_dropped() {
        let (r, seen) = router();
        r.expect(A, 2);
        r.dropped(&[A]);
        r.ack(&[A]);
        assert_eq!(*seen.lock().unwrap(), vec![(A, Fate::Dropped)]);
    }

    #[test]
    fn one_copy_needs_no_announcement() {
        let (r, seen) = router();
        r.expect(A, 1);
        r.ack(&[A]);
        assert_eq!(*seen.lock().unwrap(), vec![(A, Fate::Kept)]);
        assert!(!r.joining.load(std::sync::atomic::Ordering::Relaxed));
    }
}
