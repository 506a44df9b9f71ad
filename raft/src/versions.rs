//! Command versions: a command that an older build cannot decode enters
//! the log only once every node of the cell runs a build that can.
//!
//! Each build applies commands up to [`Application::VERSION`]. The state
//! records the cell's version — the highest every node is known to apply —
//! and it only rises: a node asks every member its build's version over the
//! peer port and, when all answer at least what a command needs, writes the
//! application's version command before that command. A node that still
//! meets a command it cannot decode (a newer leader's) stops applying
//! rather than skip it (see the state machine), and a node whose build is
//! older than its state's version refuses to start.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use crate::{
    state_machine::{Application, StateMachineStore},
    types::NodeId,
    RaftError, RaftNode,
};

/// How long a member has to say its version.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a failed raise answers for the next ones: during an upgrade,
/// each request needing a new command must not ask every member again
/// (and wait out one that is down) in turn.
const REFUSAL_HOLDS: Duration = Duration::from_secs(1);
/// How long a request waits for another's raise before giving up.
const RAISE_WAIT: Duration = Duration::from_secs(5);

/// A node's view of the recorded version and its raising.
pub(crate) struct Gate {
    /// The highest version the state is known to record (it only rises,
    /// so a stale value is merely cautious).
    known: AtomicU32,
    /// One raise at a time; the others find it done (or refused).
    raising: tokio::sync::Mutex<()>,
    /// The last refusal: when, for which version, why.
    refused: Mutex<Option<(Instant, u32, String)>>,
}

impl Gate {
    pub(crate) fn new(recorded: u32) -> Self {
        Self {
            known: AtomicU32::new(recorded),
            raising: tokio::sync::Mutex::new(()),
            refused: Mutex::new(None),
        }
    }

    pub(crate) fn known(&self) -> u32 {
        self.known.load(Ordering::Relaxed)
    }

    fn saw(&self, version: u32) {
        self.known.fetch_max(version, Ordering::Relaxed);
    }

    fn recent_refusal(&self, needed: u32) -> Option<String> {
        let r = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        r.as_ref()
            .filter(|(at, version, _)| at.elapsed() < REFUSAL_HOLDS && *version <= needed)
            .map(|(_, _, why)| why.clone())
    }

    fn refuse(&self, needed: u32, why: &str) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), needed, why.to_string()));
    }
}

/// What each member said when asked for its build's command version.
pub type MemberVersions = BTreeMap<NodeId, Result<u32, String>>;

/// The version every member applies, or why `needed` cannot be had yet.
pub fn common_version(versions: &MemberVersions, needed: u32) -> Result<u32, String> {
    let behind: Vec<String> = versions
        .iter()
        .filter_map(|(id, v)| match v {
            Ok(v) if *v >= needed => None,
            Ok(v) => Some(format!("node {id} runs a build of command version {v}")),
            Err(e) => Some(format!("node {id} did not say its version ({e})")),
        })
        .collect();
    if !behind.is_empty() {
        return Err(format!(
            "this needs command version {needed} on every node of the cell: {}",
            behind.join("; ")
        ));
    }
    versions
        .values()
        .filter_map(|v| v.as_ref().ok().copied())
        .min()
        .ok_or_else(|| "the cell has no members".to_string())
}

impl<A: Application> RaftNode<A> {
    /// The cell's command version as this node's state records it.
    pub fn cluster_version(&self) -> Result<u32, RaftError> {
        let v = self.sm.app().cluster_version(&self.store().read()?)?;
        self.versions.saw(v);
        Ok(v)
    }

    /// Each member's build version (this node's without asking).
    pub async fn member_versions(&self) -> MemberVersions {
        let m = self.metrics();
        let asks = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, info)| {
                let (id, addr) = (*id, info.peer_addr.clone());
                async move {
                    if id == self.id {
                        return (id, Ok(A::VERSION));
                    }
                    let v = self.client.version(&addr, id, ASK_TIMEOUT).await;
                    (id, v.map_err(|e| e.to_string()))
                }
            })
            .collect::<Vec<_>>();
        futures::future::join_all(asks).await.into_iter().collect()
    }

    /// Returns once the state says every node applies `needed`, raising the
    /// recorded version first if every member now runs such a build.
    pub(crate) async fn ensure_version(&self, needed: u32) -> Result<(), RaftError> {
        if self.versions.known() >= needed {
            return Ok(());
        }
        let refused = |why| Err(RaftError::UpgradeInProgress(why));
        if self.cluster_version()? >= needed {
            return Ok(());
        }
        if let Some(why) = self.versions.recent_refusal(needed) {
            return refused(why);
        }
        let Ok(_one) = tokio::time::timeout(RAISE_WAIT, self.versions.raising.lock()).await else {
            return refused("another raise of the command version is still under way".into());
        };
        if self.cluster_version()? >= needed {
            return Ok(());
        }
        if let Some(why) = self.versions.recent_refusal(needed) {
            return refused(why);
        }
        let common = match common_version(&self.member_versions().await, needed) {
            Ok(v) => v,
            Err(why) => {
                self.versions.refuse(needed, &why);
                return refused(why);
            }
        };
        let Some(cmd) = A::version_command(common) else {
            return Ok(());
        };
        if let Err(e) = self.write_encoded(storage::encode(&cmd)?).await {
            self.versions.refuse(
                needed,
                &format!("recording command version {common} failed: {e}"),
            );
            return Err(e);
        }
        tracing::info!(
            version = common,
            "every node applies this command version now"
        );
        self.versions.saw(common);
        Ok(())
    }

    /// On the leader, before a node joins: it must apply every command
    /// this leader's build may write. (Not merely the recorded version: a
    /// raise asks only the members, so one under way could miss a joiner
    /// older than it; the leader's build is at least any raise it takes
    /// part in.)
    pub(crate) async fn check_joiner(&self, id: NodeId, peer_addr: &str) -> Result<(), RaftError> {
        match self.client.version(peer_addr, id, ASK_TIMEOUT).await {
            Ok(v) if v >= A::VERSION => Ok(()),
            Ok(v) => Err(RaftError::BuildTooOld(format!(
                "node {id} runs a build of command version {v}, older than the leader's ({}): \
                 start it with at least the leader's build",
                A::VERSION
            ))),
            Err(e) => Err(RaftError::Invalid(format!(
                "cannot ask node {id} at {peer_addr} for its build's version: {e}"
            ))),
        }
    }

    /// On the leader, while the recorded version is below this build's:
    /// raises it as soon as every member runs this build (a new cell at
    /// once, an upgraded one after its last node restarted). True once the
    /// state records this build's version.
    pub(crate) async fn raise_when_possible(&self) -> bool {
        if self.cluster_version().is_ok_and(|v| v >= A::VERSION) {
            return true;
        }
        if self.is_leader() {
            if let Err(e) = self.ensure_version(A::VERSION).await {
                tracing::debug!(error = %e, "command version not raised yet");
            }
        }
        false
    }
}

/// The version `sm` records; a data directory written by a newer build is
/// refused.
pub(crate) fn check_state_version<A: Application>(
    sm: &StateMachineStore<A>,
) -> Result<u32, RaftError> {
    let v = sm.app().cluster_version(&sm.store().read()?)?;
    if v > A::VERSION {
        return Err(RaftError::Invalid(format!(
            "this node's state was written by a cell at command version {v}, and this build \
             applies up to version {}: run the build the cell's other nodes run",
            A::VERSION
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_version_is_the_lowest_once_all_reach_the_need() {
        let v: MemberVersions = [(1, Ok(3)), (2, Ok(2)), (3, Ok(4))].into();
        assert_eq!(common_version(&v, 2), Ok(2));
        let err = common_version(&v, 3).unwrap_err();
        assert!(
            err.contains("node 2 runs a build of command version 2"),
            "{err}"
        );
        assert!(!err.contains("node 1"), "{err}");
    }

    #[test]
    fn a_member_that_does_not_answer_holds_the_version_back() {
        let v: MemberVersions = [(1, Ok(2)), (2, Err("unreachable".into()))].into();
        let err = common_version(&v, 2).unwrap_err();
        assert!(
            err.contains("node 2 did not say its version (unreachable)"),
            "{err}"
        );
        assert!(common_version(&MemberVersions::new(), 1).is_err());
    }
}
