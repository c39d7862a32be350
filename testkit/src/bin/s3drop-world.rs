//! A local AWS for scripts (scripts/boot-test.sh): starts fakecloud (strict IAM, SigV4,
//! IMDS) on 127.0.0.1, provisions the bucket and the two roles as the tests do, writes
//! `NAME=value` lines (ENDPOINT, BUCKET, ROLE_ARN, REGION, INSTANCE_ID, PREFIX) to the file
//! given as its argument, and keeps fakecloud running until SIGTERM or SIGINT.

use anyhow::{Context, Result};
use s3drop_testkit::{FakeCloud, World};

const BUCKET: &str = "boot-test";

#[tokio::main]
async fn main() -> Result<()> {
    let out = std::env::args()
        .nth(1)
        .context("usage: s3drop-world ENV_FILE")?;
    let fc = FakeCloud::start()?;
    World::provision(&fc, BUCKET).await?;
    let env = s3drop_testkit::world_env(&fc, BUCKET);
    let tmp = format!("{out}.tmp");
    std::fs::write(&tmp, env)?;
    std::fs::rename(&tmp, &out)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(fc);
    Ok(())
}
