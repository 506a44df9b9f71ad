#![allow(dead_code)]

pub mod harness;
pub mod linearizability;
pub mod proxy;

/// Timing-sensitive fault tests in one binary take turns: five 3-node
/// cells killing leaders at once on two cores would measure the machine,
/// not the cell.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
