//! s3drop: watches a drop directory and uploads every complete file to S3 under one key
//! prefix, with temporary credentials minted into a session whose policy allows writing
//! only under that prefix.
//!
//! Modules follow the data's path: [`config`] → [`chain`] (local prerequisites) and
//! [`auth`] (the scoped session) → [`watch`] → [`queue`] → [`upload`] (through [`s3`],
//! recording in [`ledger`]); [`file`] and [`keys`] are facts they share. [`daemon`] wires
//! them under [`supervise`], [`check`] walks the same chain for people, [`cli`] is the
//! command line. See docs/ARCHITECTURE.md.

/// A named point where a test may kill s3drop, to see what a crash there costs (feature
/// `failpoints`, armed by `src/model.rs`; compiled to nothing otherwise).
macro_rules! kill_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}

pub mod auth;
pub mod broker;
pub mod chain;
pub mod check;
pub mod cli;
pub mod config;
pub mod connections;
pub mod daemon;
pub mod events;
pub mod file;
#[doc(hidden)]
pub mod fuzz;
pub mod handoff;
pub mod keys;
pub mod ledger;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod queue;
pub mod s3;
pub mod status;
pub mod supervise;
pub mod tree;
pub mod upload;
pub mod watch;

#[cfg(test)]
mod model;
#[cfg(test)]
mod properties;
#[cfg(test)]
mod test_alloc;
