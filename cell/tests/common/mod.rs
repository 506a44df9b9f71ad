#![allow(dead_code)]

pub mod harness;
pub mod linearizability;
pub mod proxy;
