//! s3drop's benchmark against aws-cli, rclone and minimal raw-SDK clients, on the same
//! machine, the same local S3 server (fakecloud, strict IAM and SigV4) and the same
//! credentials: a session of the upload role with s3drop's session policy, obtained from
//! the emulated IMDS exactly as s3drop obtains its own. Run it with `scripts/bench.sh`.
//!
//! P1: 10,000 files of 4 KiB dropped at once, time until all are in S3.
//! P2: one 2 GiB file: throughput and peak RSS. Two ceilings: one raw PutObject, and a raw
//!     multipart upload with s3drop's part size and part concurrency.
//! P3: s3drop's latency from close() to the object being stored, at 20 files/s.
//! P4: s3drop idle for 60 s: CPU time and RSS.
//! P5: s3drop's start-up scan, memory and disk writes with 10,000 to 1,000,000 files waiting.
//! Drain: that backlog uploaded, against the raw loop; a file dropped meanwhile.
//! First file: the first ten files after a start.
//!
//! Options and the raw-SDK client subcommands: `s3drop-bench --help`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use aws_credential_types::Credentials;
use s3drop_testkit::{Daemon, FakeCloud, INSTANCE_ID, REGION, Site, World};

const BUCKET: &str = "bench";
/// Every client uploads this many files at once: s3drop's default.
const CONCURRENCY: usize = s3drop::config::defaults::CONCURRENCY;

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

fn measure_owned(mut cmd: Command) -> Result<Usage> {
    measure(&mut cmd)
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

/// s3drop's own session policy for the bench's prefix, with the multipart action names the
/// emulator wants (as the daemon builds it under fakecloud).
fn session_policy() -> Result<String> {
    Ok(s3drop::auth::policy::session_policy(
        "aws",
        BUCKET,
        s3drop::auth::policy::Writable::Under(&format!("{INSTANCE_ID}/")),
        &Default::default(),
        true,
    )?)
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

/// A fresh server with the world provisioned, and the credentials the peers use: a session
/// of the upload role with s3drop's session policy. Every measured run gets its own, so no
/// client meets a server already holding the objects of the runs before it.
struct Server {
    fc: FakeCloud,
    creds: Credentials,
}

impl Server {
    async fn start() -> Result<Server> {
        let fc = FakeCloud::start_quiet()?;
        let world = World::provision(&fc, BUCKET).await?;
        let creds = world.assume_upload_role(Some(&session_policy()?)).await?;
        Ok(Server { fc, creds })
    }

    fn endpoint(&self) -> &str {
        &self.fc.endpoint
    }
}

struct Peers {
    work: PathBuf,
    aws: Option<PathBuf>,
    rclone: Option<PathBuf>,
}

impl Peers {
    fn aws(&self, server: &Server, args: &[&str]) -> Option<Command> {
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
        cmd.args(["--endpoint-url", server.endpoint(), "--only-show-errors"])
            .args(args)
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .envs(cred_env(&server.creds))
            .stdout(Stdio::null());
        Some(cmd)
    }

    fn rclone(&self, server: &Server, args: &[&str]) -> Option<Command> {
        let rclone = self.rclone.as_ref()?;
        let mut cmd = Command::new(rclone);
        cmd.args(args)
            .args([
                "--s3-provider=Other",
                "--s3-env-auth",
                &format!("--s3-endpoint={}", server.endpoint()),
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
            .envs(cred_env(&server.creds))
            .stdout(Stdio::null());
        Some(cmd)
    }

    fn raw_multipart(&self, server: &Server, file: &Path, key: &str) -> Command {
        let mut cmd = Command::new(std::env::current_exe().expect("own path"));
        cmd.args(["raw-multipart"])
            .arg(file)
            .args([
                &format!("{INSTANCE_ID}/{key}"),
                &PART_SIZE.to_string(),
                &PART_CONCURRENCY.to_string(),
            ])
            .env("AWS_ENDPOINT_URL", server.endpoint())
            .envs(cred_env(&server.creds));
        cmd
    }

    fn raw(&self, server: &Server, dir: &Path, key_prefix: &str) -> Command {
        let mut cmd = Command::new(std::env::current_exe().expect("own path"));
        cmd.args(["raw"])
            .arg(dir)
            .args([key_prefix, &CONCURRENCY.to_string()])
            .env("AWS_ENDPOINT_URL", server.endpoint())
            .envs(cred_env(&server.creds));
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
    daemon.wait_until_ready(Duration::from_secs(60))?;
    Ok((site, daemon))
}

const UPLOADED: &[u8] = b"\"event\":\"uploaded\"";

/// Counts s3drop's "uploaded" log lines by reading only what was appended since the last
/// look, so watching a long log does not take CPU from the daemon being measured.
struct UploadCounter {
    file: std::fs::File,
    partial: Vec<u8>,
    count: usize,
}

impl UploadCounter {
    fn new(daemon: &Daemon) -> Result<UploadCounter> {
        Ok(UploadCounter {
            file: std::fs::File::open(daemon.log_path())?,
            partial: Vec::new(),
            count: 0,
        })
    }

    fn poll(&mut self) -> Result<usize> {
        use std::io::Read;
        let mut buf = Vec::new();
        self.file.read_to_end(&mut buf)?;
        self.partial.extend_from_slice(&buf);
        // Only whole lines are counted; the rest waits for the next poll.
        if let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') {
            let lines = &self.partial[..=end];
            self.count += lines
                .split(|b| *b == b'\n')
                .filter(|l| l.windows(UPLOADED.len()).any(|w| w == UPLOADED))
                .count();
            self.partial.drain(..=end);
        }
        Ok(self.count)
    }

    /// Waits until `count` uploads in all have been logged.
    fn wait_for(&mut self, count: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let n = self.poll()?;
            if n >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {n} of {count} uploads after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Waits until s3drop has logged `count` uploads.
fn wait_uploaded(daemon: &Daemon, count: usize, limit: Duration) -> Result<()> {
    UploadCounter::new(daemon)?.wait_for(count, limit)
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

async fn sdk_client() -> aws_sdk_s3::Client {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    )
}

/// The raw-SDK ceiling for many files: one PutObject per file, `concurrency` at once, each
/// sent the cheapest way the SDK offers: files s3drop would send from memory are read into
/// memory (with the SDK's default checksum), bigger ones stream from disk.
async fn raw_loop(dir: PathBuf, key_prefix: String, concurrency: usize) -> Result<()> {
    use futures_util::StreamExt;
    let s3 = sdk_client().await;
    // Every file beneath `dir` (P5's backlog has 1,000 directories), keyed by its path.
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(&dir)
        .into_iter()
        .filter(|e| e.as_ref().map_or(true, |e| e.file_type().is_file()))
        .map(|e| e.map(|e| e.into_path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let results: Vec<Result<()>> = futures_util::stream::iter(files)
        .map(|path| {
            let s3 = s3.clone();
            let key = format!(
                "{INSTANCE_ID}/{key_prefix}{}",
                path.strip_prefix(&dir).unwrap().to_string_lossy()
            );
            async move {
                let body = if std::fs::metadata(&path)?.len() <= s3drop::s3::IN_MEMORY_MAX {
                    aws_sdk_s3::primitives::ByteStream::from(tokio::fs::read(&path).await?)
                } else {
                    aws_sdk_s3::primitives::ByteStream::from_path(&path).await?
                };
                s3.put_object()
                    .bucket(BUCKET)
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

/// The raw-SDK ceiling for one big file sent in parts, as s3drop sends it: the same part
/// size and part concurrency, each part streamed from disk with a CRC32C checksum, and the
/// part checksums handed back at completion.
async fn raw_multipart(file: PathBuf, key: String, part_size: u64, parallel: usize) -> Result<()> {
    use aws_sdk_s3::primitives::{ByteStream, Length};
    use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
    use futures_util::{StreamExt, TryStreamExt};
    let s3 = sdk_client().await;
    let size = std::fs::metadata(&file)?.len();
    let upload_id = s3
        .create_multipart_upload()
        .bucket(BUCKET)
        .key(&key)
        .checksum_algorithm(ChecksumAlgorithm::Crc32C)
        .send()
        .await?
        .upload_id
        .context("no UploadId")?;
    let count = size.div_ceil(part_size);
    let mut parts: Vec<CompletedPart> = futures_util::stream::iter(1..=count)
        .map(|n| {
            let (s3, file, key, upload_id) = (&s3, &file, &key, &upload_id);
            async move {
                let offset = (n - 1) * part_size;
                let len = part_size.min(size - offset);
                let body = ByteStream::read_from()
                    .path(file)
                    .offset(offset)
                    .length(Length::Exact(len))
                    .build()
                    .await?;
                let out = s3
                    .upload_part()
                    .bucket(BUCKET)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(n as i32)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                    .body(body)
                    .send()
                    .await?;
                anyhow::Ok(
                    CompletedPart::builder()
                        .part_number(n as i32)
                        .set_e_tag(out.e_tag)
                        .set_checksum_crc32_c(out.checksum_crc32_c)
                        .build(),
                )
            }
        })
        .buffer_unordered(parallel)
        .try_collect()
        .await?;
    parts.sort_by_key(|p| p.part_number);
    s3.complete_multipart_upload()
        .bucket(BUCKET)
        .key(&key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await?;
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The run with the median wall time.
fn median(mut runs: Vec<Usage>) -> Usage {
    runs.sort_by_key(|u| u.wall);
    runs[runs.len() / 2]
}

/// s3drop's benchmark (P1–P5) against aws-cli, rclone and raw-SDK clients on a local S3
/// server; `scripts/bench.sh` builds and runs it.
#[derive(clap::Parser)]
#[command(args_conflicts_with_subcommands = true)]
struct Options {
    /// Smaller sizes (a smoke test).
    #[arg(long)]
    quick: bool,
    /// P1 and P2 are run this many times per client; the median run is shown.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    runs: u16,
    /// Only these parts (default: all).
    #[arg(long, value_delimiter = ',', ignore_case = true)]
    only: Vec<Part>,
    /// Also write the results (markdown) to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// The s3drop binary to measure (default: the one beside this program), e.g. an older
    /// build for an A/B comparison.
    #[arg(long, value_name = "PATH")]
    s3drop: Option<PathBuf>,
    /// An older s3drop build to measure beside this one (P1, P5, drain, first file), so
    /// one run on one machine shows before and after.
    #[arg(long, value_name = "PATH")]
    before: Option<PathBuf>,
    /// Measure s3drop alone in P1 and P2 (A/B runs of two builds; no peer figures).
    #[arg(long)]
    s3drop_only: bool,
    /// Run s3drop with its metrics on (a listener on a free loopback port), to compare
    /// with the default (off).
    #[arg(long)]
    metrics: bool,
    #[command(subcommand)]
    client: Option<RawClient>,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Part {
    P1,
    P2,
    P3,
    P4,
    P5,
    /// P5's largest backlog drained (needs P5).
    Drain,
    /// The first files after a start.
    First,
    /// P1 at 1,000, 10,000 and 100,000 files: cost per file.
    Linear,
    /// 100,000 directories of one file each: watched, scanned, uploaded.
    Dirs,
}

/// The raw-SDK clients (credentials and endpoint from the environment), run as their own
/// processes so they are measured like the others.
#[derive(clap::Subcommand)]
enum RawClient {
    /// PutObject every file of DIR under KEY_PREFIX, CONCURRENCY at a time.
    Raw {
        dir: PathBuf,
        key_prefix: String,
        concurrency: usize,
    },
    /// One multipart upload of FILE to KEY.
    RawMultipart {
        file: PathBuf,
        key: String,
        part_size: u64,
        part_concurrency: usize,
    },
}

impl Options {
    fn wants(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

/// What every scenario shares, and the report it adds to.
struct Bench {
    sizes: Sizes,
    runs: usize,
    s3drop: PathBuf,
    before: Option<PathBuf>,
    /// P5's backlog (its site, the tree, how many files), which the drain uploads.
    backlog: Option<(Site, PathBuf, usize)>,
    s3drop_only: bool,
    /// Config lines every measured s3drop gets (`--metrics`).
    s3drop_config: String,
    peers: Peers,
    table: String,
    notes: Vec<String>,
}

/// s3drop's defaults for big files, which the raw multipart ceiling copies.
const PART_SIZE: u64 = s3drop::config::defaults::PART_SIZE;
const PART_CONCURRENCY: usize = s3drop::config::defaults::PART_CONCURRENCY;

/// The clients of P1, each with its name in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum P1Client {
    S3drop,
    RawLoop,
    AwsCli,
    Rclone,
    /// `--before`.
    S3dropBefore,
}

impl P1Client {
    const ALL: [P1Client; 5] = [
        Self::S3drop,
        Self::RawLoop,
        Self::AwsCli,
        Self::Rclone,
        Self::S3dropBefore,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::S3drop => "s3drop",
            Self::S3dropBefore => "s3drop before",
            Self::RawLoop => "raw SDK loop",
            Self::AwsCli => "aws s3 cp",
            Self::Rclone => "rclone copy",
        }
    }
}

/// The clients of P2, each with its name in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum P2Client {
    S3drop,
    RawPut,
    RawMultipart,
    AwsCli,
    Rclone,
}

impl P2Client {
    const ALL: [P2Client; 5] = [
        Self::S3drop,
        Self::RawPut,
        Self::RawMultipart,
        Self::AwsCli,
        Self::Rclone,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::S3drop => "s3drop",
            Self::RawPut => "raw SDK PutObject (one request)",
            Self::RawMultipart => "raw SDK multipart (s3drop's part size and concurrency)",
            Self::AwsCli => "aws s3 cp",
            Self::Rclone => "rclone copyto",
        }
    }
}

/// One table row per client: its name and `cells`, or "not installed".
fn write_rows(
    table: &mut String,
    results: &[(&str, Option<Usage>)],
    cells: impl Fn(&Usage) -> String,
) -> Result<()> {
    for (name, u) in results {
        match u {
            Some(u) => writeln!(table, "| {name} | {} |", cells(u))?,
            None => writeln!(table, "| {name} | not installed | | | |")?,
        }
    }
    Ok(())
}

/// Each client's runs, reduced to the median one (None: the client is not installed).
fn medians(names: &[&'static str], runs: Vec<Vec<Usage>>) -> Vec<(&'static str, Option<Usage>)> {
    names
        .iter()
        .zip(runs)
        .map(|(name, runs)| (*name, (!runs.is_empty()).then(|| median(runs))))
        .collect()
}

impl Bench {
    fn work(&self) -> &Path {
        &self.peers.work
    }

    /// One P1 run of client `i` on its own server; None if the client is not installed.
    async fn p1_run(&self, client: P1Client, dir: &Path) -> Result<Option<Usage>> {
        let i = client as usize;
        let server = Server::start().await?;
        let target = format!("p1-{i}/");
        let usage = match client {
            P1Client::S3drop | P1Client::S3dropBefore => {
                let binary = match client {
                    P1Client::S3drop => &self.s3drop,
                    _ => self.before.as_ref().context("--before")?,
                };
                let (site, daemon) = start_s3drop(binary, &server.fc, &self.s3drop_config)?;
                let mut counter = UploadCounter::new(&daemon)?;
                let (cpu0, _) = proc_cpu_and_rss(daemon.pid())?;
                let started = Instant::now();
                std::fs::rename(dir, site.watch.join("p1"))?;
                counter.wait_for(self.sizes.p1_files, Duration::from_secs(1800))?;
                let wall = started.elapsed();
                let (cpu1, rss) = proc_cpu_and_rss(daemon.pid())?;
                Some(Usage {
                    wall,
                    cpu: cpu1 - cpu0,
                    max_rss_kib: rss,
                })
            }
            P1Client::RawLoop => Some(measure(&mut self.peers.raw(&server, dir, &target))?),
            P1Client::AwsCli => self
                .peers
                .aws(
                    &server,
                    &[
                        "s3",
                        "cp",
                        "--recursive",
                        dir.to_str().unwrap(),
                        &s3_url(&target),
                    ],
                )
                .map(measure_owned)
                .transpose()?,
            P1Client::Rclone => self
                .peers
                .rclone(
                    &server,
                    &["copy", dir.to_str().unwrap(), &rclone_target(&target)],
                )
                .map(measure_owned)
                .transpose()?,
        };
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        Ok(usage)
    }

    /// P1: `p1_files` files of 4 KiB at once. Each run gives every client a fresh server,
    /// clients taking turns; the median of each client's runs is shown.
    async fn p1(&mut self) -> Result<()> {
        let files = self.sizes.p1_files;
        eprintln!("P1: {files} files of 4 KiB, {} runs each", self.runs);
        let mut runs: Vec<Vec<Usage>> = vec![Vec::new(); P1Client::ALL.len()];
        for run in 0..self.runs {
            for (client, usages) in P1Client::ALL.into_iter().zip(runs.iter_mut()) {
                let wanted = match client {
                    P1Client::S3drop => true,
                    P1Client::S3dropBefore => self.before.is_some(),
                    _ => !self.s3drop_only,
                };
                if !wanted {
                    continue;
                }
                let dir = self.work().join(format!("p1-{}-{run}", client as usize));
                make_files(&dir, files, 4096)?;
                if let Some(u) = self.p1_run(client, &dir).await? {
                    usages.push(u);
                }
            }
        }
        let results = medians(&P1Client::ALL.map(P1Client::name), runs);

        let table = &mut self.table;
        writeln!(
            table,
            "\n**P1** {files} files of 4 KiB dropped at once (concurrency {CONCURRENCY} for all; \
             median of {} runs, each on a fresh server)\n",
            self.runs
        )?;
        writeln!(
            table,
            "| client | seconds | files/s | s3drop's speed-up | client CPU s |"
        )?;
        writeln!(table, "|---|---|---|---|---|")?;
        let s3drop = results[0].1.expect("s3drop ran").wall;
        let shown: Vec<_> = results
            .iter()
            .copied()
            .filter(|(name, u)| *name != P1Client::S3dropBefore.name() || u.is_some())
            .collect();
        write_rows(table, &shown, |u| {
            format!(
                "{:.2} | {:.0} | {:.2}× | {:.1}",
                u.wall.as_secs_f64(),
                files as f64 / u.wall.as_secs_f64(),
                u.wall.as_secs_f64() / s3drop.as_secs_f64(),
                u.cpu.as_secs_f64()
            )
        })?;
        let wall = |client: P1Client| results[client as usize].1.map(|u| u.wall.as_secs_f64());
        if let Some(raw) = wall(P1Client::RawLoop) {
            self.notes.push(format!(
                "P1: s3drop reaches {:.0} % of the raw-SDK ceiling (target ≥ 95 %)",
                100.0 * raw / s3drop.as_secs_f64()
            ));
        }
        let cpu = |client: P1Client| results[client as usize].1.map(|u| u.cpu.as_secs_f64());
        if let (Some(ours), Some(raw)) = (cpu(P1Client::S3drop), cpu(P1Client::RawLoop)) {
            let before = cpu(P1Client::S3dropBefore)
                .map_or(String::new(), |b| format!("; before: {:.2}×", b / raw));
            self.notes.push(format!(
                "P1: s3drop's CPU per file is {:.2}× the raw loop's (target ≤ 1.05×{before})",
                ours / raw
            ));
        }
        for (peer, target) in [(P1Client::AwsCli, 5.0), (P1Client::Rclone, 1.5)] {
            if let Some(d) = wall(peer) {
                let x = d / s3drop.as_secs_f64();
                let peer = peer.name();
                self.notes
                    .push(format!("P1: {x:.2}× {peer} (target ≥ {target}×)"));
            }
        }
        Ok(())
    }

    /// One P2 run of client `i` on its own server; None if the client is not installed.
    async fn p2_run(&self, client: P2Client, big: &Path) -> Result<Option<Usage>> {
        let i = client as usize;
        let server = Server::start().await?;
        let key = format!("p2-{i}/big.bin");
        Ok(match client {
            P2Client::S3drop => {
                let (site, daemon) = start_s3drop(&self.s3drop, &server.fc, &self.s3drop_config)?;
                let dir = site.watch.join(format!("p2-{i}"));
                std::fs::create_dir(&dir)?;
                // A hard link, so every client reads the same bytes (already in the page cache).
                let staged = site.dir.path().join("big.bin");
                std::fs::hard_link(big, &staged)?;
                let mut counter = UploadCounter::new(&daemon)?;
                let started = Instant::now();
                std::fs::rename(&staged, dir.join("big.bin"))?;
                counter.wait_for(1, Duration::from_secs(3600))?;
                let wall = started.elapsed();
                daemon.signal("-TERM")?;
                let u = wait_usage(daemon.pid() as i32)?;
                std::mem::forget(daemon); // already reaped
                Some(Usage { wall, ..u })
            }
            P2Client::RawPut => {
                let dir = self.work().join("p2-raw");
                std::fs::create_dir_all(&dir)?;
                let linked = dir.join("big.bin");
                if !linked.exists() {
                    std::fs::hard_link(big, &linked)?;
                }
                Some(measure(&mut self.peers.raw(
                    &server,
                    &dir,
                    &format!("p2-{i}/"),
                ))?)
            }
            P2Client::RawMultipart => {
                Some(measure(&mut self.peers.raw_multipart(&server, big, &key))?)
            }
            P2Client::AwsCli => self
                .peers
                .aws(&server, &["s3", "cp", big.to_str().unwrap(), &s3_url(&key)])
                .map(measure_owned)
                .transpose()?,
            P2Client::Rclone => self
                .peers
                .rclone(
                    &server,
                    &["copyto", big.to_str().unwrap(), &rclone_target(&key)],
                )
                .map(measure_owned)
                .transpose()?,
        })
    }

    /// P2: one big file; each run gives every client a fresh server, clients taking turns.
    async fn p2(&mut self) -> Result<()> {
        let bytes = self.sizes.p2_bytes;
        eprintln!(
            "P2: one file of {} MiB, {} runs each",
            bytes >> 20,
            self.runs
        );
        let big = self.work().join("big.bin");
        make_big_file(&big, bytes)?;
        let mut runs: Vec<Vec<Usage>> = vec![Vec::new(); P2Client::ALL.len()];
        for _ in 0..self.runs {
            for (client, usages) in P2Client::ALL.into_iter().zip(runs.iter_mut()) {
                if self.s3drop_only && client != P2Client::S3drop {
                    continue;
                }
                if let Some(u) = self.p2_run(client, &big).await? {
                    usages.push(u);
                }
            }
        }
        std::fs::remove_file(&big)?;
        let results = medians(&P2Client::ALL.map(P2Client::name), runs);

        let table = &mut self.table;
        writeln!(
            table,
            "\n**P2** one file of {} MiB (median of {} runs, each on a fresh server)\n",
            bytes >> 20,
            self.runs
        )?;
        writeln!(table, "| client | seconds | MiB/s | peak RSS MiB | CPU s |")?;
        writeln!(table, "|---|---|---|---|---|")?;
        write_rows(table, &results, |u| {
            format!(
                "{:.1} | {:.0} | {:.1} | {:.1}",
                u.wall.as_secs_f64(),
                mib_s(bytes, u.wall),
                u.max_rss_kib as f64 / 1024.0,
                u.cpu.as_secs_f64()
            )
        })?;
        let speed = |client: P2Client| results[client as usize].1.map(|u| mib_s(bytes, u.wall));
        let ours = speed(P2Client::S3drop).expect("s3drop ran");
        let rss = results[0].1.expect("s3drop ran").max_rss_kib as f64 / 1024.0;
        for (ceiling, what) in [
            (P2Client::RawPut, "the single-request ceiling"),
            (P2Client::RawMultipart, "the multipart ceiling"),
        ] {
            if let Some(c) = speed(ceiling) {
                self.notes.push(format!(
                    "P2: s3drop reaches {:.0} % of {what} (target ≥ 90 %)",
                    100.0 * ours / c
                ));
            }
        }
        if let Some(r) = speed(P2Client::Rclone) {
            self.notes.push(format!(
                "P2: {:.2}× rclone's throughput (target ≥ 1×)",
                ours / r
            ));
        }
        self.notes.push(format!(
            "P2: s3drop's peak RSS {rss:.1} MiB (target ≤ 64 MiB)"
        ));
        Ok(())
    }

    /// P3, then P4 on the same daemon once it is idle.
    async fn p3_p4(&mut self, p3: bool, p4: bool) -> Result<()> {
        let server = Server::start().await?;
        let (site, daemon) = start_s3drop(&self.s3drop, &server.fc, "")?;
        if p3 {
            eprintln!("P3: {} s at 20 files/s", self.sizes.p3_seconds);
            let total = (self.sizes.p3_seconds * 20) as usize;
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
                let done = stored_at(&events, path)?;
                latencies.push(done.duration_since(*at).unwrap_or_default().as_secs_f64() * 1000.0);
            }
            latencies.sort_by(f64::total_cmp);
            let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
            let table = &mut self.table;
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
            self.notes
                .push(format!("P3: p99 {p99:.1} ms (target ≤ 250 ms)"));
        }
        if p4 {
            let seconds = self.sizes.p4_seconds;
            eprintln!("P4: {seconds} s idle");
            std::thread::sleep(Duration::from_secs(2));
            let (cpu0, _) = proc_cpu_and_rss(daemon.pid())?;
            std::thread::sleep(Duration::from_secs(seconds));
            let (cpu1, rss) = proc_cpu_and_rss(daemon.pid())?;
            let per_minute = (cpu1 - cpu0).as_secs_f64() * 60.0 / seconds as f64;
            let table = &mut self.table;
            writeln!(table, "\n**P4** s3drop idle for {seconds} s\n")?;
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
            self.notes.push(format!(
                "P4: {per_minute:.3} s CPU per idle minute (target < 0.1 s)"
            ));
        }
        Ok(())
    }

    /// The s3drop binaries measured: this build, and `--before` (an older one) if given.
    fn builds(&self) -> Vec<(&'static str, PathBuf)> {
        let mut builds = vec![("s3drop", self.s3drop.clone())];
        if let Some(before) = &self.before {
            builds.push(("s3drop before", before.clone()));
        }
        builds
    }

    /// P5 at scale: a backlog that nothing drains (STS unreachable, so no session) of
    /// 10,000, 100,000 and 1,000,000 files in 1,000 directories, written a day ago: how
    /// long the start-up scan takes, the memory it holds and what it writes to disk (the
    /// ledger writes nothing per waiting file). The tree grows in place between sizes.
    async fn p5(&mut self, quick: bool) -> Result<()> {
        let sizes: &[usize] = if quick {
            &[10_000, 50_000]
        } else {
            &[10_000, 100_000, 1_000_000]
        };
        let server = Server::start().await?;
        let dead = format!("http://127.0.0.1:{}", s3drop_testkit::free_port()?);
        let env = server.fc.sdk_env_via(&dead);
        let site = Site::new(BUCKET, &format!("concurrency = {CONCURRENCY}"))?;
        let tree = site.watch.join("backlog");
        let mut rows = Vec::new();
        for (name, binary) in self.builds() {
            let (base_rss, _, _) = self.p5_start(&site, &binary, &env)?;
            rows.push((name, 0usize, Duration::ZERO, base_rss, 0u64, base_rss));
        }
        let mut made = 0;
        for &files in sizes {
            eprintln!("P5: {files} files waiting");
            grow_backlog(&tree, made, files)?;
            made = files;
            for (name, binary) in self.builds() {
                let (rss, took, written) = self.p5_start(&site, &binary, &env)?;
                let base = rows.iter().find(|r| r.0 == name && r.1 == 0).unwrap().3;
                rows.push((name, files, took, rss, written, base));
            }
        }
        self.backlog = Some((site, tree, made));
        let table = &mut self.table;
        writeln!(
            table,
            "\n**P5** a backlog in 1,000 directories that nothing drains (no session): the \
             start-up scan\n"
        )?;
        writeln!(
            table,
            "| build | waiting files | scan s | RSS MiB | bytes of RSS per waiting file | bytes written per waiting file |\n|---|---|---|---|---|---|"
        )?;
        for (name, files, took, rss, written, base) in &rows {
            if *files == 0 {
                writeln!(table, "| {name} | 0 | | {:.1} | | |", *rss as f64 / 1024.0)?;
                continue;
            }
            writeln!(
                table,
                "| {name} | {files} | {:.2} | {:.1} | {:.0} | {:.2} |",
                took.as_secs_f64(),
                *rss as f64 / 1024.0,
                (rss - base) as f64 * 1024.0 / *files as f64,
                *written as f64 / *files as f64
            )?;
        }
        if let Some((_, files, took, rss, _, _)) =
            rows.iter().filter(|r| r.0 == "s3drop").max_by_key(|r| r.1)
        {
            self.notes.push(format!(
                "P5: {files} waiting files scanned in {:.1} s (target ≤ 5 s), RSS {:.0} MiB (target ≤ 128 MiB)",
                took.as_secs_f64(),
                *rss as f64 / 1024.0
            ));
        }
        Ok(())
    }

    /// Starts `binary` on `site` with `env` (no session), waits for its start-up scan and
    /// READY, and returns its RSS (KiB), the scan's time and the bytes it wrote.
    fn p5_start(
        &self,
        site: &Site,
        binary: &Path,
        env: &[(&'static str, String)],
    ) -> Result<(i64, Duration, u64)> {
        let mut daemon = Daemon::start_with_env(site, binary, env)?;
        let took = startup_scan(&mut daemon)?;
        std::thread::sleep(Duration::from_secs(2));
        let (_, rss) = proc_cpu_and_rss(daemon.pid())?;
        let written = proc_write_bytes(daemon.pid())?;
        let uploaded = daemon.events("uploaded").len();
        anyhow::ensure!(uploaded == 0, "{uploaded} uploads without a session");
        daemon.stop()?;
        Ok((rss, took, written))
    }

    /// Drain: P5's largest backlog uploaded by s3drop (started with it in place) and by
    /// the raw loop, each on a fresh server: the rate, s3drop's CPU and its memory while
    /// the queue empties, and how long a file dropped in another directory mid-drain
    /// waits (the queue's fair share).
    async fn drain(&mut self) -> Result<()> {
        let Some((site, tree, files)) = self.backlog.take() else {
            bail!("the drain needs P5's backlog (run P5 too)");
        };
        let mut rows = Vec::new();
        // This build only: a million uploads take about ten minutes per client, and the
        // before build's canary would simply wait for the whole backlog (its queue was one
        // FIFO; tests/e2e/scale.rs shows that as a failure when the lanes are removed).
        for (name, binary) in self.builds().into_iter().take(1) {
            eprintln!("drain: {name}, {files} files");
            let server = Server::start().await?;
            let started = Instant::now();
            let mut daemon = Daemon::start(&site, &binary, &server.fc)?;
            daemon.wait_until_ready(Duration::from_secs(600))?;
            let ready_rss = proc_cpu_and_rss(daemon.pid())?.1;
            let mut counter = UploadCounter::new(&daemon)?;
            let (mut peak, mut canary) = (ready_rss, None);
            let deadline = Instant::now() + Duration::from_secs(3600);
            while counter.poll()? < files + usize::from(canary.is_some()) {
                anyhow::ensure!(Instant::now() < deadline, "the drain took over an hour");
                std::thread::sleep(Duration::from_millis(200));
                peak = peak.max(proc_cpu_and_rss(daemon.pid())?.1);
                if canary.is_none() && counter.count >= files / 10 {
                    let path = site
                        .watch
                        .join("canary")
                        .join(format!("{name}.dat").replace(' ', "-"));
                    std::fs::create_dir_all(path.parent().unwrap())?;
                    std::fs::write(&path, b"canary")?;
                    canary = Some((path, SystemTime::now()));
                }
            }
            let wall = started.elapsed();
            let (cpu, _) = proc_cpu_and_rss(daemon.pid())?;
            let waited = match &canary {
                Some((path, at)) => stored_at(&daemon.events("uploaded"), path)?
                    .duration_since(*at)
                    .unwrap_or_default(),
                None => Duration::ZERO,
            };
            daemon.stop()?;
            if let Some((path, _)) = canary {
                std::fs::remove_file(path)?;
            }
            // The next build starts with an empty ledger, as this one did.
            std::fs::remove_file(site.state.join("ledger.redb"))?;
            rows.push((name, Some(wall), Some(cpu), ready_rss, peak, Some(waited)));
        }
        eprintln!("drain: raw SDK loop, {files} files");
        let server = Server::start().await?;
        let raw = measure(&mut self.peers.raw(&server, &tree, "drain/"))?;
        rows.push((
            "raw SDK loop",
            Some(raw.wall),
            Some(raw.cpu),
            0,
            raw.max_rss_kib,
            None,
        ));
        let table = &mut self.table;
        writeln!(
            table,
            "\n**Drain** P5's backlog of {files} files of 1 byte, uploaded (each client on a \
             fresh server; s3drop started with the backlog in place, timed from its start)\n"
        )?;
        writeln!(
            table,
            "| client | seconds | files/s | CPU s | CPU ms per file | RSS at READY MiB | peak RSS MiB | a file dropped in another directory mid-drain, close to stored s |\n|---|---|---|---|---|---|---|---|"
        )?;
        for (name, wall, cpu, ready, peak, waited) in &rows {
            let (wall, cpu) = (wall.unwrap(), cpu.unwrap());
            writeln!(
                table,
                "| {name} | {:.1} | {:.0} | {:.1} | {:.3} | {} | {:.1} | {} |",
                wall.as_secs_f64(),
                files as f64 / wall.as_secs_f64(),
                cpu.as_secs_f64(),
                cpu.as_secs_f64() * 1000.0 / files as f64,
                if *ready > 0 {
                    format!("{:.1}", *ready as f64 / 1024.0)
                } else {
                    String::new()
                },
                *peak as f64 / 1024.0,
                waited.map_or(String::new(), |w| format!("{:.2}", w.as_secs_f64()))
            )?;
        }
        let ours = rows[0].1.unwrap().as_secs_f64();
        let raw_wall = raw.wall.as_secs_f64();
        self.notes.push(format!(
            "Drain: s3drop reaches {:.0} % of the raw loop's rate (target ≥ 95 %); the file dropped mid-drain was stored in {:.2} s (target ≤ 2 s); peak RSS {:.0} MiB against {:.0} MiB at READY (the queue does not grow while it drains)",
            100.0 * raw_wall / ours,
            rows[0].5.unwrap().as_secs_f64(),
            rows[0].4 as f64 / 1024.0,
            rows[0].3 as f64 / 1024.0
        ));
        Ok(())
    }

    /// First file: how long the first files after a start take, close to stored, one
    /// after another (the session already minted): is the first slower than the tenth?
    async fn first_file(&mut self) -> Result<()> {
        let mut rows = Vec::new();
        for (name, binary) in self.builds() {
            let mut latencies = Vec::new();
            for round in 0..3 {
                eprintln!("first file: {name}, round {round}");
                let server = Server::start().await?;
                let (site, mut daemon) = start_s3drop(&binary, &server.fc, "")?;
                daemon.wait_for_event("session_minted", &[], Duration::from_secs(60))?;
                std::thread::sleep(Duration::from_secs(1));
                let mut these = Vec::new();
                for i in 0..10 {
                    let path = site.watch.join(format!("first-{i}.dat"));
                    std::fs::write(&path, vec![b'x'; 4096])?;
                    let closed = SystemTime::now();
                    let event = daemon.wait_for_event(
                        "uploaded",
                        &[("path", &path.to_string_lossy())],
                        Duration::from_secs(60),
                    )?;
                    let done = stored_at(std::slice::from_ref(&event), &path)?;
                    these.push(
                        done.duration_since(closed)
                            .unwrap_or_default()
                            .as_secs_f64()
                            * 1000.0,
                    );
                }
                daemon.stop()?;
                latencies.push(these);
            }
            rows.push((name, latencies));
        }
        let table = &mut self.table;
        writeln!(
            table,
            "\n**First file** close to stored for the first ten files after a start, one at \
             a time (4 KiB, the session already minted; 3 starts, each on a fresh server; \
             the 100 ms quiet period is part of each)\n"
        )?;
        writeln!(
            table,
            "| build | 1st ms (each start) | 2nd ms | 10th ms | median of 2nd–10th ms |\n|---|---|---|---|---|"
        )?;
        for (name, latencies) in &rows {
            let firsts: Vec<String> = latencies.iter().map(|l| format!("{:.1}", l[0])).collect();
            let mut rest: Vec<f64> = latencies.iter().flat_map(|l| l[1..].to_vec()).collect();
            rest.sort_by(f64::total_cmp);
            let median_of = |i: usize| {
                let mut v: Vec<f64> = latencies.iter().map(|l| l[i]).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            writeln!(
                table,
                "| {name} | {} | {:.1} | {:.1} | {:.1} |",
                firsts.join(", "),
                median_of(1),
                median_of(9),
                percentile(&rest, 0.5)
            )?;
        }
        let ours = &rows[0].1;
        let mut firsts: Vec<f64> = ours.iter().map(|l| l[0]).collect();
        firsts.sort_by(f64::total_cmp);
        let mut tenths: Vec<f64> = ours.iter().map(|l| l[9]).collect();
        tenths.sort_by(f64::total_cmp);
        self.notes.push(format!(
            "First file: {:.1} ms against the tenth's {:.1} ms (medians of 3 starts; target: not slower)",
            firsts[1], tenths[1]
        ));
        Ok(())
    }
}

impl Bench {
    /// Linear cost: P1's 4 KiB files dropped at once, s3drop and the raw loop, at three
    /// sizes: time and CPU per file should stay flat.
    async fn linear(&mut self, quick: bool) -> Result<()> {
        let sizes: &[usize] = if quick {
            &[1_000, 5_000]
        } else {
            &[1_000, 10_000, 100_000]
        };
        let mut rows = Vec::new();
        for &files in sizes {
            for client in [P1Client::S3drop, P1Client::RawLoop] {
                eprintln!("linear: {} with {files} files", client.name());
                let dir = self
                    .work()
                    .join(format!("linear-{files}-{}", client as usize));
                make_files(&dir, files, 4096)?;
                let saved = self.sizes.p1_files;
                self.sizes.p1_files = files;
                let usage = self.p1_run(client, &dir).await?.context("measured")?;
                self.sizes.p1_files = saved;
                rows.push((client.name(), files, usage));
            }
        }
        let table = &mut self.table;
        writeln!(
            table,
            "\n**Linear cost** P1 (4 KiB files dropped at once) at {} files, one run each\n",
            sizes
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        writeln!(
            table,
            "| client | files | seconds | ms per file | CPU ms per file |\n|---|---|---|---|---|"
        )?;
        for (name, files, u) in &rows {
            writeln!(
                table,
                "| {name} | {files} | {:.2} | {:.3} | {:.3} |",
                u.wall.as_secs_f64(),
                u.wall.as_secs_f64() * 1000.0 / *files as f64,
                u.cpu.as_secs_f64() * 1000.0 / *files as f64
            )?;
        }
        let ours: Vec<f64> = rows
            .iter()
            .filter(|r| r.0 == "s3drop")
            .map(|(_, files, u)| u.cpu.as_secs_f64() / *files as f64)
            .collect();
        let (lo, hi) = ours
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), c| (lo.min(*c), hi.max(*c)));
        self.notes.push(format!(
            "Linear: s3drop's CPU per file varies by {:.0} % between {} and {} files (target ≤ 10 %)",
            100.0 * (hi - lo) / lo,
            sizes[0],
            sizes[sizes.len() - 1]
        ));
        Ok(())
    }

    /// Many directories: 100,000 directories of one file each, made before the start
    /// (watched and scanned at start-up, every file uploaded), with the inotify limit of
    /// this machine.
    async fn dirs(&mut self, quick: bool) -> Result<()> {
        let count = if quick { 10_000 } else { 100_000 };
        eprintln!("dirs: {count} directories");
        let server = Server::start().await?;
        let site = Site::new(BUCKET, &format!("concurrency = {CONCURRENCY}"))?;
        for i in 0..count {
            let dir = site
                .watch
                .join(format!("t{:02}", i % 100))
                .join(format!("d{i:06}"));
            std::fs::create_dir_all(&dir)?;
            settled_file(&dir.join("f.dat"))?;
        }
        let started = Instant::now();
        let mut daemon = Daemon::start(&site, &self.s3drop, &server.fc)?;
        let scan = startup_scan(&mut daemon)?;
        let ready_after = started.elapsed();
        let (_, rss) = proc_cpu_and_rss(daemon.pid())?;
        UploadCounter::new(&daemon)?.wait_for(count, Duration::from_secs(1800))?;
        let wall = started.elapsed();
        let limit = daemon.events("watch_limit_reached");
        let (cpu, _) = proc_cpu_and_rss(daemon.pid())?;
        let pid = daemon.pid();
        let watched = inotify_watches(pid)?;
        // Removed directories release their watches: the tree removed, then 10 cycles of
        // 10,000 directories made and removed, counted by the kernel (fdinfo).
        for top in 0..100 {
            std::fs::remove_dir_all(site.watch.join(format!("t{top:02}")))?;
        }
        let cycle_dirs = count / 10;
        for cycle in 0..10 {
            let top = site.watch.join(format!("cycle{cycle}"));
            for i in 0..cycle_dirs {
                std::fs::create_dir_all(top.join(format!("d{i:05}")))?;
            }
            wait_watches(pid, |n| n > cycle_dirs, "the cycle's directories watched")?;
            std::fs::remove_dir_all(&top)?;
        }
        let left = wait_watches(pid, |n| n == 1, "only watch_dir's own watch left")?;
        daemon.stop()?;
        let max_watches =
            std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches").unwrap_or_default();
        let table = &mut self.table;
        writeln!(
            table,
            "\n**Many directories** {count} directories of one file each (in 100 top-level \
             directories), there before the start; `fs.inotify.max_user_watches` = {}\n",
            max_watches.trim()
        )?;
        writeln!(
            table,
            "| scan s | READY after s | RSS at READY MiB | all uploaded after s | CPU s | watch limit reached | watches held | after removing them and 10 cycles of {cycle_dirs} made and removed |\n|---|---|---|---|---|---|---|---|"
        )?;
        writeln!(
            table,
            "| {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {} | {watched} | {left} |",
            scan.as_secs_f64(),
            ready_after.as_secs_f64(),
            rss as f64 / 1024.0,
            wall.as_secs_f64(),
            cpu.as_secs_f64(),
            if limit.is_empty() {
                "no".to_string()
            } else {
                format!("yes, said {} time(s)", limit.len())
            }
        )?;
        Ok(())
    }
}

/// The inotify watches process `pid` holds, as the kernel lists them (`/proc/PID/fdinfo`).
fn inotify_watches(pid: u32) -> Result<usize> {
    let mut watches = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let info = std::fs::read_to_string(entry?.path()).unwrap_or_default();
        watches += info
            .lines()
            .filter(|l| l.starts_with("inotify wd:"))
            .count();
    }
    Ok(watches)
}

/// Waits (up to 120 s) until `pid`'s watch count satisfies `done`; returns it.
fn wait_watches(pid: u32, done: impl Fn(usize) -> bool, what: &str) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = inotify_watches(pid)?;
        if done(n) {
            return Ok(n);
        }
        if Instant::now() > deadline {
            bail!("{what}: {n} watches after 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Bytes the process caused to be written to storage (`/proc/PID/io`).
fn proc_write_bytes(pid: u32) -> Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .context("write_bytes")?
        .trim()
        .parse()
        .context("write_bytes")
}

/// Grows the backlog from `from` to `to` files of 1 byte, spread over 1,000 directories,
/// each last modified a day ago (a host that was offline: every file has settled).
fn grow_backlog(tree: &Path, from: usize, to: usize) -> Result<()> {
    for i in from..to {
        let dir = tree.join(format!("d{:03}", i % 1000));
        if i < 1000 {
            std::fs::create_dir_all(&dir)?;
        }
        settled_file(&dir.join(format!("f{i:07}.dat")))?;
    }
    Ok(())
}

/// A file of 1 byte last modified a day ago: settled, so a scan takes it at once.
fn settled_file(path: &Path) -> Result<()> {
    use std::io::Write;
    let file = std::fs::File::create(path)?;
    (&file).write_all(b"x")?;
    file.set_modified(SystemTime::now() - Duration::from_secs(86_400))?;
    Ok(())
}

/// Waits for the daemon's start-up scan and READY; the scan's own duration.
fn startup_scan(daemon: &mut Daemon) -> Result<Duration> {
    let scanned = daemon.wait_for_event(
        "scanned",
        &[("reason", "startup")],
        Duration::from_secs(600),
    )?;
    daemon.wait_until_ready(Duration::from_secs(60))?;
    Ok(Duration::from_millis(
        scanned["duration_ms"].as_u64().context("duration_ms")?,
    ))
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = <Options as clap::Parser>::parse();
    match options.client {
        Some(RawClient::Raw {
            dir,
            key_prefix,
            concurrency,
        }) => return raw_loop(dir, key_prefix, concurrency).await,
        Some(RawClient::RawMultipart {
            file,
            key,
            part_size,
            part_concurrency,
        }) => return raw_multipart(file, key, part_size, part_concurrency).await,
        None => {}
    }
    let sizes = if options.quick {
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
    let s3drop = match &options.s3drop {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("s3drop"),
    };
    anyhow::ensure!(
        s3drop.exists(),
        "{} missing: scripts/bench.sh builds it",
        s3drop.display()
    );

    let work = tempfile::tempdir()?;
    let mut bench = Bench {
        sizes,
        runs: options.runs.into(),
        s3drop: s3drop.clone(),
        before: options.before.clone(),
        backlog: None,
        s3drop_only: options.s3drop_only,
        s3drop_config: if options.metrics {
            "metrics_listen = \"127.0.0.1:0\"".to_string()
        } else {
            String::new()
        },
        peers: Peers {
            work: work.path().to_owned(),
            aws: which("aws"),
            rclone: which("rclone"),
        },
        table: String::new(),
        notes: Vec::new(),
    };
    if options.wants(Part::P1) {
        bench.p1().await?;
    }
    if options.wants(Part::P2) {
        bench.p2().await?;
    }
    if options.wants(Part::P3) || options.wants(Part::P4) {
        bench
            .p3_p4(options.wants(Part::P3), options.wants(Part::P4))
            .await?;
    }
    if options.wants(Part::P5) || options.wants(Part::Drain) {
        bench.p5(options.quick).await?;
    }
    if options.wants(Part::Drain) {
        bench.drain().await?;
    }
    if options.wants(Part::First) {
        bench.first_file().await?;
    }
    if options.wants(Part::Linear) {
        bench.linear(options.quick).await?;
    }
    if options.wants(Part::Dirs) {
        bench.dirs(options.quick).await?;
    }

    let mut out = String::new();
    writeln!(
        out,
        "## Results{}",
        if options.quick {
            " (--quick sizes)"
        } else {
            ""
        }
    )?;
    out.push_str(&bench.table);
    writeln!(out, "\n**Against the targets**\n")?;
    for n in &bench.notes {
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
    if let Some(report) = options.report {
        std::fs::write(&report, out)?;
        eprintln!("written to {}", report.display());
    }
    Ok(())
}

/// `2026-11-24T07:10:34.561707Z` → SystemTime.
fn parse_rfc3339(ts: &str) -> Result<SystemTime> {
    Ok(humantime::parse_rfc3339(ts)?)
}

/// When S3 confirmed `path`: the timestamp of its `uploaded` event among `events`.
fn stored_at(events: &[serde_json::Value], path: &Path) -> Result<SystemTime> {
    let event = events
        .iter()
        .find(|e| e["path"] == path.to_string_lossy().as_ref())
        .with_context(|| format!("no upload event for {}", path.display()))?;
    parse_rfc3339(event["timestamp"].as_str().context("timestamp")?)
}
