//! Fault injection for tests: drop or delay the RPCs to and from chosen peers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Injected faults, per peer: drop every RPC to and from it, or delay them. Shared by a node's
/// client and server side, so isolating a node needs only that node's `Faults`.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Mutex<HashMap<u64, Fault>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Fault {
    drop: bool,
    delay: Duration,
}

impl Faults {
    /// Drop every RPC to and from `peer`.
    pub fn isolate(&self, peer: u64) {
        self.with(peer, |f| f.drop = true);
    }
    /// Delay every RPC to and from `peer` (each direction).
    pub fn delay(&self, peer: u64, d: Duration) {
        self.with(peer, |f| f.delay = d);
    }
    /// Remove every fault.
    pub fn heal(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Fault>> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with(&self, peer: u64, f: impl FnOnce(&mut Fault)) {
        f(self.lock().entry(peer).or_default());
    }

    fn get(&self, peer: u64) -> Fault {
        self.lock().get(&peer).copied().unwrap_or_default()
    }

    /// Apply the fault for `peer`: Err if dropped, after the delay otherwise.
    pub(super) async fn pass(&self, peer: u64) -> Result<(), &'static str> {
        let f = self.get(peer);
        if !f.delay.is_zero() {
            tokio::time::sleep(f.delay).await;
        }
        if f.drop {
            return Err("dropped by fault injection");
        }
        Ok(())
    }
}
