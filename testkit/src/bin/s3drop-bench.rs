//! s3drop's benchmark against aws-cli, rclone and a minimal raw-SDK PutObject loop, on the
//! same machine, the same local S3 server (fakecloud, strict IAM and SigV4) and the same
//! credentials: a session of the upload role with s3drop's session policy, obtained from
//! the emulated IMDS exactly as s3drop obtains its own. Run it with `scripts/bench.sh`.
//!
//! P1: 10,000 files of 4 KiB dropped at once, time until all are in S3.
//! P2: one 2 GiB file: throughput and peak RSS.
//! P3: s3drop's latency from close() to the object being stored, at 20 files/s.
//! P4: s3drop idle for 60 s: CPU time and RSS.
//!
//! `s3drop-bench raw DIR KEY_PREFIX CONCURRENCY` is the raw-SDK loop (credentials, endpoint
//! and bucket from the environment), run as its own process so it is measured like the
//! others.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use aws_credential_types::Credentials;
use s3drop_testkit::{Daemon, FakeCloud, INSTANCE_ID, REGION, Site, World};

const BUCKET: &str = "bench";
const CONCURRENCY: usize = 16;

struct Sizes {
    p1_files: usize,
    p2_bytes: u64,
    p3_seconds: u64,
    p4_seconds: u64,
}

/// What one measured process used.
#[derive(Debug, Clone, Copy)]
struct Usage {
    wall: Duration,
    max_rss_kib: i64,
    cpu: Duration,
}

/// Runs `cmd` to completion and reads its own resource usage with wait4.
fn measure(cmd: &mut Command) -> Result<Usage> {
    let started = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let usage = wait_usage(child.id() as i32)?;
    Ok(Usage {
        wall: started.elapsed(),
        ..usage
    })
}

fn wait_usage(pid: i32) -> Result<Usage> {
    let mut status = 0;
    // SAFETY: rusage is plain data, filled by the kernel.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child; status and ru are valid pointers.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if rc < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("process {pid} failed (status {status})");
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(Usage {
        wall: Duration::ZERO,
        max_rss_kib: ru.ru_maxrss,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
    })
}

fn session_policy() -> String {
    serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Action": ["s3:PutObject", "s3:AbortMultipartUpload", "s3:CreateMultipartUpload",
                   "s3:UploadPart", "s3:CompleteMultipartUpload"],
        "Resource": format!("arn:aws:s3:::{BUCKET}/{INSTANCE_ID}/*")}]})
    .to_string()
}

fn cred_env(c: &Credentials) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", c.access_key_id().to_string()),
        ("AWS_SECRET_ACCESS_KEY", c.secret_access_key().to_string()),
        (
            "AWS_SESSION_TOKEN",
            c.session_token().unwrap_or_default().to_string(),
        ),
        ("AWS_REGION", REGION.to_string()),
        ("AWS_DEFAULT_REGION", REGION.to_string()),
    ]
}

fn make_files(dir: &Path, count: usize, size: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..count {
        let body: Vec<u8> = (0..size).map(|j| (i * 31 + j) as u8).collect();
        std::fs::write(dir.join(format!("f{i:05}.dat")), body)?;
    }
    Ok(())
}

fn make_big_file(path: &Path, size: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let block: Vec<u8> = (0..(1 << 20))
        .map(|j: u32| (j.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

struct Peers<'a> {
    fc: &'a FakeCloud,
    creds: Credentials,
    work: PathBuf,
    aws: Option<PathBuf>,
    rclone: Option<PathBuf>,
}

impl Peers<'_> {
    fn aws(&self, args: &[&str]) -> Option<Command> {
        let aws = self.aws.as_ref()?;
        let config = self.work.join("aws-config");
        std::fs::write(
            &config,
            format!(
                "[default]\nregion = {REGION}\ns3 =\n  max_concurrent_requests = {CONCURRENCY}\n  addressing_style = path\n"
            ),
        )
        .ok()?;
        let mut cmd = Command::new(aws);
        cmd.args(["--endpoint-url", &self.fc.endpoint, "--only-show-errors"])
            .args(args)
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .envs(cred_env(&self.creds))
            .stdout(Stdio::null());
        Some(cmd)
    }

    fn rclone(&self, args: &[&str]) -> Option<Command> {
        let rclone = self.rclone.as_ref()?;
        let mut cmd = Command::new(rclone);
        cmd.args(args)
            .args([
                "--s3-provider=Other",
                "--s3-env-auth",
                &format!("--s3-endpoint={}", self.fc.endpoint),
                &format!("--s3-region={REGION}"),
                "--s3-force-path-style",
                "--s3-no-check-bucket",
                // The session may only write: no listing, no HEAD after the upload.
                "--no-check-dest",
                "--s3-no-head",
                &format!("--transfers={CONCURRENCY}"),
                &format!("--checkers={CONCURRENCY}"),
                "--config=/dev/null",
            ])
            .env_remove("AWS_CA_BUNDLE")
            .envs(cred_env(&self.creds))
            .stdout(Stdio::null());
        Some(cmd)
    }

    fn raw(&self, dir: &Path, key_prefix: &str) -> Command {
        let mut cmd = Command::new(std::env::current_exe().expect("own path"));
        cmd.args(["raw"])
            .arg(dir)
            .args([key_prefix, &CONCURRENCY.to_string()])
            .env("AWS_ENDPOINT_URL", &self.fc.endpoint)
            .envs(cred_env(&self.creds));
        cmd
    }
}

fn s3_url(key_prefix: &str) -> String {
    format!("s3://{BUCKET}/{INSTANCE_ID}/{key_prefix}")
}

fn rclone_target(key_prefix: &str) -> String {
    format!(":s3:{BUCKET}/{INSTANCE_ID}/{key_prefix}")
}

/// Starts s3drop on a fresh site and waits until it is ready.
fn start_s3drop(s3drop: &Path, fc: &FakeCloud, extra: &str) -> Result<(Site, Daemon)> {
    let site = Site::new(BUCKET, &format!("concurrency = {CONCURRENCY}\n{extra}"))?;
    let mut daemon = Daemon::start(&site, s3drop, fc)?;
    daemon.wait_for_log("ready: backlog queued", Duration::from_secs(60))?;
    Ok((site, daemon))
}

/// Waits until s3drop has logged `count` uploads, returning when the last one was logged.
fn wait_uploaded(daemon: &Daemon, count: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let n = daemon.log().matches("\"message\":\"uploaded\"").count();
        if n >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {n} of {count} uploads after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn proc_cpu_and_rss(pid: u32) -> Result<(Duration, i64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let utime: u64 = fields[11].parse()?;
    let stime: u64 = fields[12].parse()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1);
    Ok((Duration::from_millis((utime + stime) * 1000 / ticks), rss))
}

fn tool_version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .ok()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|| "not installed".into())
}

fn which(name: &str) -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

async fn raw_loop(dir: PathBuf, key_prefix: String, concurrency: usize) -> Result<()> {
    use futures_util::StreamExt;
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    );
    let bucket = std::env::var("BENCH_BUCKET").unwrap_or_else(|_| BUCKET.into());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let results: Vec<Result<()>> = futures_util::stream::iter(files)
        .map(|path| {
            let (s3, bucket) = (s3.clone(), bucket.clone());
            let key = format!(
                "{INSTANCE_ID}/{key_prefix}{}",
                path.file_name().unwrap().to_string_lossy()
            );
            async move {
                let body = aws_sdk_s3::primitives::ByteStream::from_path(&path).await?;
                s3.put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(body)
                    .send()
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("raw") {
        let [_, _, dir, prefix, concurrency] = &args[..] else {
            bail!("usage: s3drop-bench raw DIR KEY_PREFIX CONCURRENCY");
        };
        return raw_loop(PathBuf::from(dir), prefix.clone(), concurrency.parse()?).await;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let report = args
        .iter()
        .position(|a| a == "--report")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let sizes = if quick {
        Sizes {
            p1_files: 1_000,
            p2_bytes: 256 << 20,
            p3_seconds: 10,
            p4_seconds: 10,
        }
    } else {
        Sizes {
            p1_files: 10_000,
            p2_bytes: 2 << 30,
            p3_seconds: 30,
            p4_seconds: 60,
        }
    };
    let s3drop = std::env::current_exe()?.with_file_name("s3drop");
    anyhow::ensure!(
        s3drop.exists(),
        "{} missing: scripts/bench.sh builds it",
        s3drop.display()
    );

    let fc = FakeCloud::start()?;
    let world = World::provision(&fc, BUCKET).await?;
    let creds = world.assume_upload_role(Some(&session_policy())).await?;
    let work = tempfile::tempdir()?;
    let peers = Peers {
        fc: &fc,
        creds,
        work: work.path().to_owned(),
        aws: which("aws"),
        rclone: which("rclone"),
    };
    let mut table = String::new();
    let mut notes = Vec::new();

    // P1
    eprintln!("P1: {} files of 4 KiB", sizes.p1_files);
    let mut p1 = Vec::new();
    {
        let staging = work.path().join("p1-s3drop");
        make_files(&staging, sizes.p1_files, 4096)?;
        let (site, daemon) = start_s3drop(&s3drop, &fc, "")?;
        let (cpu0, _) = proc_cpu_and_rss(daemon.pid())?;
        let started = Instant::now();
        std::fs::rename(&staging, site.watch.join("p1-s3drop"))?;
        wait_uploaded(&daemon, sizes.p1_files, Duration::from_secs(1800))?;
        let wall = started.elapsed();
        let (cpu1, _) = proc_cpu_and_rss(daemon.pid())?;
        p1.push(("s3drop", Some((wall, cpu1 - cpu0))));
        drop(daemon);
    }
    {
        let dir = work.path().join("p1-raw");
        make_files(&dir, sizes.p1_files, 4096)?;
        let u = measure(&mut peers.raw(&dir, "p1-raw/"))?;
        p1.push(("raw SDK loop", Some((u.wall, u.cpu))));
    }
    for (name, cmd) in [
        ("aws s3 cp", {
            let dir = work.path().join("p1-aws");
            make_files(&dir, sizes.p1_files, 4096)?;
            peers.aws(&[
                "s3",
                "cp",
                "--recursive",
                dir.to_str().unwrap(),
                &s3_url("p1-aws/"),
            ])
        }),
        ("rclone copy", {
            let dir = work.path().join("p1-rclone");
            make_files(&dir, sizes.p1_files, 4096)?;
            peers.rclone(&["copy", dir.to_str().unwrap(), &rclone_target("p1-rclone")])
        }),
    ] {
        match cmd {
            Some(mut cmd) => {
                let u = measure(&mut cmd)?;
                p1.push((name, Some((u.wall, u.cpu))));
            }
            None => p1.push((name, None)),
        }
    }
    let p1_of = |n: &str| {
        p1.iter()
            .find(|(k, _)| *k == n)
            .and_then(|(_, d)| d.map(|(wall, _)| wall))
    };
    writeln!(
        table,
        "\n**P1** {} files of 4 KiB dropped at once (concurrency {CONCURRENCY} for all)\n",
        sizes.p1_files
    )?;
    writeln!(
        table,
        "| client | seconds | files/s | s3drop's speed-up | client CPU s |"
    )?;
    writeln!(table, "|---|---|---|---|---|")?;
    let s3drop_p1 = p1_of("s3drop").unwrap();
    for (name, d) in &p1 {
        match d {
            Some((d, cpu)) => writeln!(
                table,
                "| {name} | {:.2} | {:.0} | {:.2}× | {:.1} |",
                d.as_secs_f64(),
                sizes.p1_files as f64 / d.as_secs_f64(),
                d.as_secs_f64() / s3drop_p1.as_secs_f64(),
                cpu.as_secs_f64()
            )?,
            None => writeln!(table, "| {name} | not installed | | | |")?,
        }
    }
    if let Some(raw) = p1_of("raw SDK loop") {
        notes.push(format!(
            "P1: s3drop reaches {:.0} % of the raw-SDK ceiling (target ≥ 80 %)",
            100.0 * raw.as_secs_f64() / s3drop_p1.as_secs_f64()
        ));
    }
    for (peer, target) in [("aws s3 cp", 5.0), ("rclone copy", 1.5)] {
        if let Some(d) = p1_of(peer) {
            let x = d.as_secs_f64() / s3drop_p1.as_secs_f64();
            notes.push(format!("P1: {x:.2}× {peer} (target ≥ {target}×)"));
        }
    }

    // P2
    eprintln!("P2: one file of {} MiB", sizes.p2_bytes >> 20);
    let mut p2: Vec<(&str, Option<Usage>)> = Vec::new();
    let big = work.path().join("big.bin");
    make_big_file(&big, sizes.p2_bytes)?;
    {
        let (site, daemon) = start_s3drop(&s3drop, &fc, "")?;
        let dir = site.watch.join("p2");
        std::fs::create_dir(&dir)?;
        // Hard link, so the same bytes (already in the page cache) are read by every client.
        let staged = site.dir.path().join("big.bin");
        std::fs::hard_link(&big, &staged)?;
        let started = Instant::now();
        std::fs::rename(&staged, dir.join("big.bin"))?;
        wait_uploaded(&daemon, 1, Duration::from_secs(3600))?;
        let wall = started.elapsed();
        daemon.signal("-TERM")?;
        let u = wait_usage(daemon_pid(&daemon))?;
        p2.push(("s3drop", Some(Usage { wall, ..u })));
        std::mem::forget(daemon); // already reaped
        world
            .s3
            .delete_object()
            .bucket(BUCKET)
            .key(format!("{INSTANCE_ID}/p2/big.bin"))
            .send()
            .await?;
    }
    {
        let dir = work.path().join("p2-raw");
        std::fs::create_dir(&dir)?;
        std::fs::hard_link(&big, dir.join("big.bin"))?;
        p2.push((
            "raw SDK PutObject",
            Some(measure(&mut peers.raw(&dir, "p2-raw/"))?),
        ));
        world
            .s3
            .delete_object()
            .bucket(BUCKET)
            .key(format!("{INSTANCE_ID}/p2-raw/big.bin"))
            .send()
            .await?;
    }
    for (name, cmd, key) in [
        (
            "aws s3 cp",
            peers.aws(&["s3", "cp", big.to_str().unwrap(), &s3_url("p2-aws/big.bin")]),
            "p2-aws/big.bin",
        ),
        (
            "rclone copyto",
            peers.rclone(&[
                "copyto",
                big.to_str().unwrap(),
                &rclone_target("p2-rclone/big.bin"),
            ]),
            "p2-rclone/big.bin",
        ),
    ] {
        match cmd {
            Some(mut cmd) => {
                p2.push((name, Some(measure(&mut cmd)?)));
                world
                    .s3
                    .delete_object()
                    .bucket(BUCKET)
                    .key(format!("{INSTANCE_ID}/{key}"))
                    .send()
                    .await?;
            }
            None => p2.push((name, None)),
        }
    }
    writeln!(table, "\n**P2** one file of {} MiB\n", sizes.p2_bytes >> 20)?;
    writeln!(table, "| client | seconds | MiB/s | peak RSS MiB | CPU s |")?;
    writeln!(table, "|---|---|---|---|---|")?;
    for (name, u) in &p2 {
        match u {
            Some(u) => writeln!(
                table,
                "| {name} | {:.1} | {:.0} | {:.1} | {:.1} |",
                u.wall.as_secs_f64(),
                mib_s(sizes.p2_bytes, u.wall),
                u.max_rss_kib as f64 / 1024.0,
                u.cpu.as_secs_f64()
            )?,
            None => writeln!(table, "| {name} | not installed | | | |")?,
        }
    }

    // P3
    eprintln!("P3: {} s at 20 files/s", sizes.p3_seconds);
    let (site, daemon) = start_s3drop(&s3drop, &fc, "")?;
    let total = (sizes.p3_seconds * 20) as usize;
    let mut closed = Vec::with_capacity(total);
    let start = Instant::now();
    for i in 0..total {
        let due = start + Duration::from_millis(50 * i as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let path = site.watch.join(format!("p3-{i:05}.dat"));
        std::fs::write(&path, vec![b'x'; 4096])?;
        closed.push((path, SystemTime::now()));
    }
    wait_uploaded(&daemon, total, Duration::from_secs(300))?;
    let mut latencies: Vec<f64> = Vec::new();
    let events = daemon.events("uploaded");
    for (path, at) in &closed {
        let event = events
            .iter()
            .find(|e| e["path"] == path.to_string_lossy().as_ref())
            .context("an upload event for every file")?;
        let ts = event["timestamp"].as_str().context("timestamp")?;
        let done = parse_rfc3339(ts)?;
        latencies.push(done.duration_since(*at).unwrap_or_default().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    writeln!(
        table,
        "\n**P3** s3drop, close() to stored, {total} files at 20 files/s\n"
    )?;
    writeln!(table, "| p50 ms | p99 ms | max ms |\n|---|---|---|")?;
    writeln!(
        table,
        "| {p50:.1} | {p99:.1} | {:.1} |",
        latencies.last().unwrap()
    )?;
    notes.push(format!("P3: p99 {p99:.1} ms (target ≤ 250 ms)"));

    // P4: the same daemon, now idle.
    eprintln!("P4: {} s idle", sizes.p4_seconds);
    std::thread::sleep(Duration::from_secs(2));
    let pid = daemon_pid(&daemon) as u32;
    let (cpu0, _) = proc_cpu_and_rss(pid)?;
    std::thread::sleep(Duration::from_secs(sizes.p4_seconds));
    let (cpu1, rss) = proc_cpu_and_rss(pid)?;
    let per_minute = (cpu1 - cpu0).as_secs_f64() * 60.0 / sizes.p4_seconds as f64;
    writeln!(table, "\n**P4** s3drop idle for {} s\n", sizes.p4_seconds)?;
    writeln!(
        table,
        "| CPU s | CPU s per idle minute | RSS MiB |\n|---|---|---|"
    )?;
    writeln!(
        table,
        "| {:.3} | {per_minute:.3} | {:.1} |",
        (cpu1 - cpu0).as_secs_f64(),
        rss as f64 / 1024.0
    )?;
    notes.push(format!(
        "P4: {per_minute:.3} s CPU per idle minute (target < 0.1 s)"
    ));
    drop(daemon);

    // P5: memory with a long queue. A bandwidth cap of 64 KiB/s lets about 64 files a
    // second through, so nearly all of them are still waiting when RSS is read.
    let waiting = if quick { 10_000 } else { 100_000 };
    eprintln!("P5: {waiting} files waiting");
    {
        let staging = work.path().join("p5");
        std::fs::create_dir(&staging)?;
        for i in 0..waiting {
            std::fs::write(staging.join(format!("queued-{i:06}.dat")), b"x")?;
        }
        let (site, mut daemon) = start_s3drop(&s3drop, &fc, "max_bandwidth = \"64KiB\"")?;
        let pid = daemon_pid(&daemon) as u32;
        let (_, idle_rss) = proc_cpu_and_rss(pid)?;
        std::fs::rename(&staging, site.watch.join("p5"))?;
        daemon.wait_for_log("directory moved in", Duration::from_secs(300))?;
        std::thread::sleep(Duration::from_secs(2));
        let (_, rss) = proc_cpu_and_rss(pid)?;
        let sent = daemon.log().matches("\"message\":\"uploaded\"").count();
        writeln!(
            table,
            "\n**P5** s3drop with {waiting} files queued (uploads throttled)\n"
        )?;
        writeln!(
            table,
            "| RSS before MiB | RSS with the queue MiB | bytes per waiting file | sent meanwhile |\n|---|---|---|---|"
        )?;
        writeln!(
            table,
            "| {:.1} | {:.1} | {:.0} | {sent} |",
            idle_rss as f64 / 1024.0,
            rss as f64 / 1024.0,
            (rss - idle_rss) as f64 * 1024.0 / (waiting - sent) as f64
        )?;
        drop(daemon);
    }

    let mut out = String::new();
    writeln!(
        out,
        "## Results{}",
        if quick { " (--quick sizes)" } else { "" }
    )?;
    out.push_str(&table);
    writeln!(out, "\n**Against the targets**\n")?;
    for n in &notes {
        writeln!(out, "- {n}")?;
    }
    writeln!(
        out,
        "\n**Versions**: {}; {}; {}; raw loop: aws-sdk-s3 from this workspace's \
         Cargo.lock; server: {}",
        tool_version(s3drop.to_str().unwrap(), "--version"),
        tool_version("aws", "--version"),
        tool_version("rclone", "--version"),
        tool_version(
            &s3drop_testkit::fakecloud_bin().to_string_lossy(),
            "--version"
        )
    )?;
    println!("{out}");
    if let Some(report) = report {
        std::fs::write(&report, out)?;
        eprintln!("written to {}", report.display());
    }
    Ok(())
}

fn daemon_pid(daemon: &Daemon) -> i32 {
    daemon.pid() as i32
}

/// `2026-11-24T07:10:34.561707Z` → SystemTime.
fn parse_rfc3339(ts: &str) -> Result<SystemTime> {
    Ok(humantime::parse_rfc3339(ts)?)
}
