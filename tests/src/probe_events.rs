//! Test helper: what a probe run in process sends, waited for by predicate in any order.
//!
//! Used by the end-to-end tests (`caretaker_tests::probe_events`) and, included by path, by the
//! agent's own unit tests (`agent/src/probe/software/tests.rs`): generic over the event type
//! and using tokio alone, since the agent cannot depend on this crate (it depends on the agent).

use std::collections::VecDeque;
use std::fmt::Debug;
use std::time::Duration;

use tokio::sync::mpsc;

/// How long `wait_for` waits: a broken probe fails the test rather than hanging it.
const PATIENCE: Duration = Duration::from_secs(60);

/// The receiving end of a probe's event channel.
pub struct ProbeEvents<E> {
    rx: mpsc::Receiver<E>,
    /// Every event received so far, in order.
    pub seen: Vec<E>,
    /// Received but not yet matched by a `wait_for`: a probe's events may come in any order.
    unclaimed: VecDeque<E>,
}

impl<E: Clone + Debug> ProbeEvents<E> {
    pub fn new(rx: mpsc::Receiver<E>) -> Self {
        Self {
            rx,
            seen: Vec::new(),
            unclaimed: VecDeque::new(),
        }
    }

    /// The first event satisfying `pred`, earlier unclaimed ones first; panics naming `what`
    /// and listing everything seen if none comes within a minute.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&E) -> bool) -> E {
        if let Some(i) = self.unclaimed.iter().position(&pred) {
            return self.unclaimed.remove(i).expect("position is in range");
        }
        let found = tokio::time::timeout(PATIENCE, async {
            loop {
                let ev = self.rx.recv().await.expect("probe stopped");
                self.seen.push(ev.clone());
                if pred(&ev) {
                    return ev;
                }
                self.unclaimed.push_back(ev);
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no {what} within {PATIENCE:?}; saw: {:#?}", self.seen))
    }
}
