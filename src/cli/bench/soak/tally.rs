//! The soak's counters: every task adds to a tally by name, and the report reads them.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Counters by name, shared by every task; `failures: …` must all stay zero.
#[derive(Default)]
pub struct Tally {
    counts: Mutex<BTreeMap<String, u64>>,
    first_failures: Mutex<Vec<String>>,
}

impl Tally {
    pub fn add(&self, key: &str, n: u64) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        // Called per proxied chunk and per trickled byte: allocate a key only the first time.
        match counts.get_mut(key) {
            Some(count) => *count += n,
            None => {
                counts.insert(key.to_owned(), n);
            }
        }
    }

    /// Records a failure; the first few are kept word for word for the report.
    pub fn fail(&self, what: &str) {
        self.add("failures", 1);
        let mut first = self.first_failures.lock().unwrap_or_else(|p| p.into_inner());
        if first.len() < 20 {
            first.push(what.to_owned());
        }
    }

    /// The failures kept word for word.
    pub fn first_failures(&self) -> Vec<String> {
        self.first_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every count so far.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
