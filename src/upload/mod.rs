//! The upload pipeline, from a complete file in the queue to a confirmed object and a
//! ledger record: workers ([`worker`]) decide each file's fate, send it whole or in parts
//! ([`send`]) through the S3 seam, pace the bytes ([`pacing`]), retry by one policy
//! ([`retry`]) and carry out the after-upload action ([`after`]).

pub mod after;
pub mod pacing;
pub mod progress;
pub mod retry;
pub mod send;
pub mod worker;

pub use after::AfterUploadAction;
pub use progress::Progress;
pub use send::Sender;
pub use worker::{Context, Worker};
