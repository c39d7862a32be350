//! s3drop's main job, end to end, on a local AWS: start fakecloud (strict IAM, SigV4
//! checks, IMDS), provision the bucket and roles through the AWS APIs, run `s3drop check`
//! and `s3drop run`, drop sample files, list what arrived, and show that a write outside
//! the prefix is denied. Run it with `scripts/demo.sh`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use s3drop_testkit::{
    Daemon, FakeCloud, INSTANCE_ID, Site, UPLOAD_ROLE, World, policies, role_arn,
};

const BUCKET: &str = "s3drop-demo";

fn s3drop_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("S3DROP_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let sibling = exe.with_file_name("s3drop");
    anyhow::ensure!(
        sibling.exists(),
        "{} not found: build it first (scripts/demo.sh does)",
        sibling.display()
    );
    Ok(sibling)
}

fn step(title: &str) {
    println!("\n==> {title}");
}

#[tokio::main]
async fn main() -> Result<()> {
    let s3drop = s3drop_bin()?;

    step("Starting fakecloud (strict IAM, SigV4 verification, IMDS)");
    let fc = FakeCloud::start()?;
    println!("    endpoint {}", fc.endpoint);

    step("Provisioning through the AWS APIs (as the emulator's admin)");
    let world = World::provision(&fc, BUCKET).await?;
    println!("    bucket       s3://{BUCKET}");
    println!(
        "    instance role {} may only: {}",
        role_arn("s3drop-instance"),
        policies::instance_role_policy()
    );
    println!(
        "    upload role   {} may: {}",
        role_arn(UPLOAD_ROLE),
        policies::upload_role_policy(BUCKET)
    );

    let site = Site::new(BUCKET, "")?;
    println!("    config {}:", site.config.display());
    for line in std::fs::read_to_string(&site.config)?.lines() {
        println!("      {line}");
    }

    step("s3drop check (credentials only from the emulated IMDS)");
    let check = site.command(&s3drop, &fc, &["check"]).output()?;
    print!("{}", String::from_utf8_lossy(&check.stdout));
    anyhow::ensure!(
        check.status.success(),
        "check failed: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    step("Dropping a file before the daemon starts (backlog)");
    std::fs::write(site.watch.join("before-start.csv"), b"id,value\n1,42\n")?;

    step("s3drop run");
    let mut daemon = Daemon::start(&site, &s3drop, &fc)?;
    daemon.wait_until_ready(Duration::from_secs(30))?;

    step("Dropping files: one in a new subdirectory, one renamed into place, one excluded (.tmp)");
    std::fs::create_dir_all(site.watch.join("reports/2026"))?;
    std::fs::write(
        site.watch.join("reports/2026/november.json"),
        b"{\"ok\":true}\n",
    )?;
    let staged = site.dir.path().join("capture.pcap.partial");
    std::fs::write(&staged, vec![7u8; 64 * 1024])?;
    std::fs::rename(&staged, site.watch.join("capture.pcap"))?;
    std::fs::write(site.watch.join("in-progress.tmp"), b"not for upload")?;

    for key in [
        "before-start.csv",
        "reports/2026/november.json",
        "capture.pcap",
    ] {
        world
            .wait_for_object(&format!("{INSTANCE_ID}/{key}"), Duration::from_secs(30))
            .await?;
    }
    let status = daemon.stop()?;

    step("s3drop's log (JSON lines, as journald would get them)");
    for line in daemon
        .log()
        .lines()
        .filter(|l| l.contains("\"event\":\"uploaded\"") || l.contains("\"event\":\"started\""))
    {
        println!("    {line}");
    }
    println!("    exit after SIGTERM: {status}");

    step(&format!("Objects in s3://{BUCKET}"));
    for key in world.keys().await? {
        let size = world.get_object(&key).await?.map_or(0, |b| b.len());
        println!("    {key:<50} {size:>8} bytes");
    }

    step("Least privilege: the same upload role, with and without s3drop's session policy");
    let unscoped = world.s3_as(world.assume_upload_role(None).await?).await;
    let allowed = unscoped
        .put_object()
        .bucket(BUCKET)
        .key("outside/role-alone.txt")
        .body(b"x".to_vec().into())
        .send()
        .await;
    println!(
        "    upload role alone, PUT s3://{BUCKET}/outside/role-alone.txt: {}",
        if allowed.is_ok() { "allowed" } else { "denied" }
    );
    let scope_line = String::from_utf8_lossy(&check.stdout)
        .lines()
        .find(|l| l.contains("scope holds"))
        .context("check printed no scope line")?
        .to_string();
    println!("    s3drop's own session (from check): {scope_line}");
    println!(
        "\nDone: files arrived under {INSTANCE_ID}/, and the session could not write elsewhere."
    );
    Ok(())
}
