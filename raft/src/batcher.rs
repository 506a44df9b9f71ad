//! Group commit: concurrent writes on a node are gathered into one Raft
//! entry, so they share one append (and fsync) on every node.
//!
//! openraft 0.9 appends (and fsyncs) each `client_write` separately, so
//! without this the write throughput of a cell is one fsync per request.
//! While a batch is in flight the next one fills up.

use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::{
    state_machine::Application,
    types::{Command, ItemReply, Reply},
    wire::{LeaderOk, LeaderOp},
    RaftError, RaftNode,
};

/// Most commands in one entry.
const MAX_ITEMS: usize = 1024;
/// Most encoded bytes in one entry.
const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Batches in flight at once. One: every entry costs each node an append,
/// a replication round and an apply commit whatever it holds, so under load
/// fewer, fuller entries are cheaper. With a second batch in flight
/// (overlapping the leader's fsync with replication) 64 clients' entries
/// held ~20 commands instead of ~32, a checkout cost 6–19% more node CPU
/// in seven of eight paired runs (24% less in the eighth), and config-store
/// puts were no faster within this machine's noise (session 11, `cellctl
/// bench checkout` and `bench kv`).
const IN_FLIGHT: usize = 1;

pub(crate) type BatchResult = Result<(u64, Vec<ItemReply>), RaftError>;

pub(crate) struct Pending {
    pub items: Vec<Vec<u8>>,
    pub done: oneshot::Sender<BatchResult>,
}

pub(crate) fn spawn<A: Application>(node: Weak<RaftNode<A>>) -> mpsc::Sender<Pending> {
    let (tx, rx) = mpsc::channel(16 * 1024);
    tokio::spawn(run(node, rx));
    tx
}

async fn run<A: Application>(node: Weak<RaftNode<A>>, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for a slot before draining: the queue grows meanwhile.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes: usize = first.items.iter().map(Vec::len).sum();
        let mut count = first.items.len();
        let mut group = vec![first];
        while count < MAX_ITEMS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    count += p.items.len();
                    bytes += p.items.iter().map(Vec::len).sum::<usize>();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let Some(node) = node.upgrade() else { return };
        tokio::spawn(async move {
            let _permit = permit;
            commit_group(&node, group).await;
        });
    }
}

async fn commit_group<A: Application>(node: &RaftNode<A>, group: Vec<Pending>) {
    let sizes: Vec<usize> = group.iter().map(|p| p.items.len()).collect();
    let mut senders = Vec::with_capacity(group.len());
    let mut items = Vec::with_capacity(sizes.iter().sum());
    for p in group {
        items.extend(p.items.into_iter().map(serde_bytes::ByteBuf::from));
        senders.push(p.done);
    }
    let result = node.leader_op(LeaderOp::Write(Command(items))).await;
    match result {
        Ok(LeaderOk::Written {
            index,
            reply: Reply::Batch(replies),
        }) if replies.len() == sizes.iter().sum::<usize>() => {
            let mut replies = replies.into_iter();
            for (done, n) in senders.into_iter().zip(sizes) {
                let mine: Vec<ItemReply> = replies.by_ref().take(n).collect();
                let _ = done.send(Ok((index, mine)));
            }
        }
        Ok(other) => {
            for done in senders {
                let _ = done.send(Err(RaftError::Fatal(format!(
                    "unexpected leader answer {other:?}"
                ))));
            }
        }
        Err(e) => {
            for done in senders {
                let _ = done.send(Err(e.duplicate()));
            }
        }
    }
}
