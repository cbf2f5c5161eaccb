//! [`Switch`]: an on/off fault that its victims can wait on (a partition, a hang, a power
//! controller that does not answer). Clones share the switch.

use std::sync::Arc;

use tokio::sync::watch;

/// An on/off fault (see the module docs). Off by default.
#[derive(Clone, Debug)]
pub struct Switch(Arc<watch::Sender<bool>>);

impl Default for Switch {
    fn default() -> Self {
        Switch(Arc::new(watch::channel(false).0))
    }
}

impl Switch {
    pub fn set(&self, on: bool) {
        self.0.send_replace(on);
    }

    pub fn is_on(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once the switch is off (at once if it is).
    pub async fn off(&self) {
        let mut state = self.0.subscribe();
        let _ = state.wait_for(|on| !*on).await;
    }

    /// Returns once the switch is on (at once if it is).
    pub async fn on(&self) {
        let mut state = self.0.subscribe();
        let _ = state.wait_for(|on| *on).await;
    }
}
