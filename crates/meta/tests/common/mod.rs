#![allow(dead_code)] // each test binary uses a different subset

pub mod group;

pub use meta::fixtures::*;
