//! Acknowledgements: the token an input (tail, HTTP) attaches to a chunk, and the router that
//! hands it back to that input once the chunk's lines are delivered or durably spooled (or
//! dropped as configured).

use std::collections::HashMap;

/// Acknowledgement token: once the lines of the chunk carrying it are delivered (or durably
/// spooled), input `input` hears of it. For a tail input, the file `file` may be checkpointed
/// at `offset`; for an HTTP input, `file` is the request and `offset` the chunk's number in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub input: u32,
    pub file: u64,
    pub offset: u64,
}

/// Routes acknowledgements of delivered batches back to the inputs that asked for them
/// (by `Ack::input`). Inputs that need acks register a handler before the pipeline starts.
#[derive(Default)]
pub struct AckRouter {
    routes: std::sync::RwLock<HashMap<u32, AckHandler>>,
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

    fn route(&self, acks: &[Ack], fate: Fate) {
        if acks.is_empty() {
            return;
        }
        let routes = self.routes.read().unwrap();
        for a in acks {
            if let Some(h) = routes.get(&a.input) {
                h(*a, fate);
            }
        }
    }
}
