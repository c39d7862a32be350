//! s3drop: watches a drop directory and uploads every complete file to S3 under one key
//! prefix, with temporary credentials from the instance role chained into an upload role
//! whose session policy allows writing only under that prefix.
//!
//! Modules follow the data's path: [`config`] → [`session`] ([`credentials`], [`policy`])
//! → [`watch`] → [`queue`] → [`worker`] ([`ledger`], [`keys`], [`transfer`]: [`upload`], [`pacing`]); [`daemon`]
//! wires them, [`check`] diagnoses them, [`cli`] is the command line.

pub mod check;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod keys;
pub mod ledger;
pub mod logging;
pub mod pacing;
pub mod policy;
pub mod queue;
pub mod session;
pub mod transfer;
pub mod upload;
pub mod watch;
pub mod worker;
