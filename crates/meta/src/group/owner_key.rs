//! The key of the digest-ownership hash (crates/peer): a leader that finds
//! none proposes random bytes, and the first committed stays for the
//! group's life. Members learn it from the log like any other state, so
//! every member ranks owners with the same key, and no client can.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use tracing::{debug, info, warn};

use crate::command::OWNER_KEY_BYTES;
use crate::raft::Raft;
use crate::{Command, StateDb};

/// How often a member without the key looks again between Raft changes.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How soon a leader whose proposal failed (it was just elected, or is
/// changing the membership) proposes again.
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// Returns once this member has applied an owner key; proposes one
/// whenever it leads a group without.
pub(crate) async fn ensure(raft: Raft, state: Arc<StateDb>) {
    let mut changes = raft.metrics();
    loop {
        match state.owner_key() {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(e) => warn!(error = %e, "reading the owner key failed"),
        }
        let leads = changes.borrow_watched().state == ServerState::Leader;
        if leads {
            let key = rand::random::<[u8; OWNER_KEY_BYTES]>().to_vec();
            match raft.client_write(Command::SetOwnerKey { key }).await {
                Ok(_) => {
                    info!("set the group's owner key");
                    continue;
                }
                // A leader just elected, or one losing its quorum: the
                // writability lines tell that story; try again in a while.
                Err(e) => {
                    debug!(error = %e, "proposing the owner key failed; trying again");
                    tokio::time::sleep(RETRY_AFTER).await;
                    continue;
                }
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(LOOK_EVERY) => {}
        }
    }
}
