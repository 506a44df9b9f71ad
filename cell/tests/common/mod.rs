#![allow(dead_code)]

pub mod linearizability;
