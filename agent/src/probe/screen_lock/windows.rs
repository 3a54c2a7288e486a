//! Screen lock on Windows, this far: Windows' own machine inactivity limit, checked at start,
//! on every policy change and every five minutes (Group Policy or an administrator may change
//! it), set where the policy says so, and reported as `screen.compliance`.
//!
//! Not yet: the per-session helper (a service in session 0 cannot see the user's input or
//! lock the user's session), so the agent does not lock at the policy's moment itself and
//! sends no `screen.locked_by_policy`; Windows' limit does the locking.

use std::sync::Arc;
use std::time::Duration;

use caretaker_proto::policy::{PolicyDocument, ScreenLockPolicy};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ScreenLockConfig;
use super::decide::ComplianceState;
use super::machine_limit::{self, Reading};
use crate::event::{EventSink, NewEvent};
use crate::os::windows::registry;

/// How often the limit is read again without a policy change.
const RECHECK: Duration = Duration::from_secs(5 * 60);

/// The probe as the agent spawns it.
pub async fn run(
    _config: ScreenLockConfig,
    mut policy: watch::Receiver<Arc<PolicyDocument>>,
    sink: EventSink,
    shutdown: CancellationToken,
) {
    let mut last: Option<(ComplianceState, String)> = None;
    let mut policy_open = true;
    loop {
        crate::probe::liveness::beat();
        let current = super::effective_policy(&policy.borrow_and_update().screen_lock);
        let reading = apply(&current);
        let now = machine_limit::compliance(&current, &reading);
        if last.as_ref() != Some(&now) {
            tracing::info!(state = now.0.as_str(), reason = %now.1, "Screen-lock compliance");
            let details = crate::details! { "state" => now.0.as_str(), "reason" => now.1.clone() };
            if !sink
                .emit(NewEvent::now("screen.compliance", None, details))
                .await
            {
                return;
            }
            last = Some(now);
        }
        let recheck = tokio::time::sleep(RECHECK);
        tokio::pin!(recheck);
        loop {
            crate::probe::liveness::beat();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = crate::probe::liveness::idle() => continue,
                _ = &mut recheck => {}
                r = policy.changed(), if policy_open => {
                    if r.is_err() {
                        policy_open = false;
                        continue;
                    }
                }
            }
            break;
        }
    }
}

/// Reads the limit and writes the policy's where it differs.
fn apply(policy: &ScreenLockPolicy) -> Reading {
    let machine = windows_registry::LOCAL_MACHINE;
    let found = registry::read_dword(machine, machine_limit::KEY, machine_limit::VALUE)
        .map_err(|e| e.to_string());
    let wrote = machine_limit::needs_write(policy, &found).map(|want| {
        let done = registry::write_dword(machine, machine_limit::KEY, machine_limit::VALUE, want);
        match &done {
            Ok(()) => tracing::info!(seconds = want, "Set Windows' machine inactivity limit"),
            Err(e) => tracing::warn!(error = %e, "Cannot set Windows' machine inactivity limit"),
        }
        done.map(|()| want).map_err(|e| e.to_string())
    });
    Reading { found, wrote }
}
