//! Acknowledgements: the token a tail input attaches to a chunk, and the router that hands it
//! back to that input once the chunk's lines are delivered or durably spooled.

use std::collections::HashMap;

/// Acknowledgement token of a tail input: once the lines of the chunk carrying it are delivered
/// (or durably spooled), the file `file` may be checkpointed at `offset`.
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

type AckHandler = Box<dyn Fn(Ack) + Send + Sync>;

impl AckRouter {
    pub fn register(&self, input: u32, handler: impl Fn(Ack) + Send + Sync + 'static) {
        self.routes
            .write()
            .unwrap()
            .insert(input, Box::new(handler));
    }

    /// Called once a batch's lines are delivered, dead-lettered or durably stored.
    pub fn ack(&self, acks: &[Ack]) {
        if acks.is_empty() {
            return;
        }
        let routes = self.routes.read().unwrap();
        for a in acks {
            if let Some(h) = routes.get(&a.input) {
                h(*a);
            }
        }
    }
}
