//! s3drop's end-to-end tests, one binary with a module per area (as ripgrep does: one
//! link of the SDK instead of fourteen). They run the real `s3drop` binary against
//! fakecloud, a real systemd, real producers; `common` is what they share.

mod common;

mod beneath;
mod boot;
mod broker;
mod crash;
mod end_to_end;
mod fleet;
mod generated;
mod handoff;
mod monitoring;
mod multipart;
mod objects;
mod overflow;
mod packaging;
mod producers;
mod robustness;
mod scale;
mod sentences;
