//! Fixtures shared by s3drop's end-to-end tests and the demo: a fakecloud server in strict
//! IAM mode with SigV4 checks, the world s3drop expects (bucket, instance role, upload
//! role) created through the normal AWS APIs, and the real `s3drop` binary run against it.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use serde_json::json;

pub mod fleet;
pub mod model;
pub mod proxy;

pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";
pub const INSTANCE_ID: &str = "i-0123456789abcdef0";
pub const INSTANCE_ROLE: &str = "s3drop-instance";
pub const UPLOAD_ROLE: &str = "s3drop-upload";

/// fakecloud 0.51 authorizes CreateMultipartUpload, UploadPart and CompleteMultipartUpload
/// under those names, where AWS authorizes them as `s3:PutObject`. s3drop's session policy
/// is AWS-correct; with this test-only variable it also names the emulator's actions, so
/// multipart uploads can run under strict IAM here. Every s3drop the testkit starts has it.
pub const EMULATOR_ENV: &str = "S3DROP_TEST_EMULATOR_MULTIPART_ACTIONS";

pub fn role_arn(name: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/{name}")
}

/// The object key s3drop gives `relative` with the default prefix on the emulated instance.
pub fn object_key(relative: &str) -> String {
    format!("{INSTANCE_ID}/{relative}")
}

/// A test's world: fakecloud started, `bucket` and the roles provisioned, and a site whose
/// config has `extra` appended. Panics on failure (tests only).
pub async fn setup(bucket: &str, extra: &str) -> (FakeCloud, World, Site) {
    let fc = FakeCloud::start().expect("fakecloud starts");
    let world = World::provision(&fc, bucket).await.expect("provisioning");
    let site = Site::new(bucket, extra).expect("site");
    (fc, world, site)
}

/// `NAME=value` lines describing a provisioned local AWS, for scripts (sourced by
/// scripts/boot-test.sh): ENDPOINT, BUCKET, ROLE_ARN, REGION, INSTANCE_ID, PREFIX.
pub fn world_env(fc: &FakeCloud, bucket: &str) -> String {
    format!(
        "ENDPOINT={}\nBUCKET={bucket}\nROLE_ARN={}\nREGION={REGION}\nINSTANCE_ID={INSTANCE_ID}\n\
         PREFIX={}\n",
        fc.endpoint,
        role_arn(UPLOAD_ROLE),
        object_key("")
    )
}

/// The `fakecloud` binary: `$FAKECLOUD_BIN`, else `fakecloud` on PATH.
pub fn fakecloud_bin() -> PathBuf {
    std::env::var_os("FAKECLOUD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("fakecloud"))
}

/// A loopback port free at the moment of asking.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running fakecloud, killed on drop. Its log (debug level: one line per request) is
/// kept in a file so tests can count the requests a client really made.
pub struct FakeCloud {
    child: Child,
    pub endpoint: String,
    log_path: PathBuf,
    clock_file: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

/// How fakecloud is started besides the default (strict IAM, real clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Iam {
    StrictShiftableClock,
    Soft,
}

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

impl FakeCloud {
    pub fn start() -> Result<FakeCloud> {
        FakeCloud::start_with(None, "debug")
    }

    /// IAM in `soft` mode: denials are logged, not enforced. Only for what strict mode
    /// cannot decide: fakecloud 0.51 gives a federated user no identity policies, so under
    /// strict IAM every request a GetFederationToken session signs is denied, where AWS
    /// would evaluate the IAM user's policies and the session policy (LOCAL-AWS.md, 6).
    pub fn start_soft_iam() -> Result<FakeCloud> {
        FakeCloud::start_with(Some(Iam::Soft), "debug")
    }

    /// For the benchmark: the server logs warnings only, so logging every request does not
    /// take CPU from the clients being measured (and request counting is not available).
    pub fn start_quiet() -> Result<FakeCloud> {
        FakeCloud::start_with(None, "warn")
    }

    /// Starts fakecloud with its wall clock under libfaketime (Debian package `faketime`),
    /// so [`FakeCloud::shift_clock`] can move the emulator's time while it runs: sessions
    /// it issued expire without waiting. Monotonic time is left alone.
    pub fn start_with_shiftable_clock() -> Result<FakeCloud> {
        anyhow::ensure!(
            Path::new(LIBFAKETIME).exists(),
            "{LIBFAKETIME} is missing: install Debian's `faketime` package"
        );
        FakeCloud::start_with(Some(Iam::StrictShiftableClock), "debug")
    }

    /// Moves fakecloud's clock to `seconds` ahead of real time.
    pub fn shift_clock(&self, seconds: i64) -> Result<()> {
        let file = self
            .clock_file
            .as_ref()
            .context("fakecloud was not started with a shiftable clock")?;
        std::fs::write(file, format!("{seconds:+}\n"))?;
        Ok(())
    }

    fn start_with(variant: Option<Iam>, log_level: &str) -> Result<FakeCloud> {
        let dir = tempfile::tempdir()?;
        let clock_file =
            (variant == Some(Iam::StrictShiftableClock)).then(|| dir.path().join("faketime"));
        let iam = if variant == Some(Iam::Soft) {
            "soft"
        } else {
            "strict"
        };
        if let Some(file) = &clock_file {
            std::fs::write(file, "+0\n")?;
        }
        let log_path = dir.path().join("fakecloud.log");
        let log = std::fs::File::create(&log_path)?;
        // Port 0: the kernel picks a free port as fakecloud binds it, and fakecloud announces
        // it (`FAKECLOUD_PORT=`). A port picked free beforehand could be bound by a parallel
        // test's server in between, and the health check would then pass on that one.
        let child = Command::new(fakecloud_bin())
            .args(["--addr", "127.0.0.1:0"])
            .args(["--iam", iam, "--verify-sigv4"])
            .args(["--credentials-role-arn", &role_arn(INSTANCE_ROLE)])
            .args(["--imds-instance-id", INSTANCE_ID])
            .args(["--region", REGION, "--log-level", log_level])
            .env("NO_COLOR", "1")
            .envs(clock_file.iter().flat_map(|file| {
                [
                    ("LD_PRELOAD", PathBuf::from(LIBFAKETIME)),
                    ("FAKETIME_TIMESTAMP_FILE", file.clone()),
                    ("FAKETIME_NO_CACHE", PathBuf::from("1")),
                    ("FAKETIME_DONT_FAKE_MONOTONIC", PathBuf::from("1")),
                ]
            }))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (install it: cargo install fakecloud --version 0.51.0 --locked)",
                    fakecloud_bin().display()
                )
            })?;
        let mut fc = FakeCloud {
            child,
            endpoint: String::new(),
            log_path,
            clock_file,
            _dir: dir,
        };
        fc.wait_healthy(Duration::from_secs(60))?;
        Ok(fc)
    }

    /// Waits for the port fakecloud announces, then for its health check on that port.
    fn wait_healthy(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("fakecloud exited early ({status}): {}", self.log());
            }
            if self.endpoint.is_empty() {
                let port = self.log().lines().find_map(|l| {
                    l.strip_prefix("FAKECLOUD_PORT=")
                        .and_then(|p| p.trim().parse::<u16>().ok())
                });
                match port {
                    Some(port) => self.endpoint = format!("http://127.0.0.1:{port}"),
                    None => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
            }
            let addr = self.endpoint.trim_start_matches("http://");
            if http_get_status(addr, "/_fakecloud/health").is_ok_and(|s| s == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("fakecloud did not become healthy: {}", self.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// How many PUT requests fakecloud answered for each object key in `bucket` (from its
    /// debug log), whatever their status. Bucket-level PUTs (`/bucket/`) are not counted.
    pub fn object_puts(&self, bucket: &str) -> BTreeMap<String, usize> {
        self.count_puts(bucket, |_| true)
    }

    /// Like [`FakeCloud::object_puts`], counting only PUTs answered 200: objects stored.
    pub fn objects_stored(&self, bucket: &str) -> BTreeMap<String, usize> {
        self.count_puts(bucket, |line| line.contains("status=200"))
    }

    /// STS calls of `action` (`AssumeRole`, …) fakecloud handled (from its log), whatever
    /// their answer.
    pub fn sts_calls(&self, action: &str) -> usize {
        let action = format!("action={action} ");
        self.log()
            .lines()
            .filter(|l| l.contains("handling request") && l.contains("service=sts"))
            .filter(|l| l.contains(&action))
            .count()
    }

    /// Parts of multipart uploads to `key` that fakecloud stored (UploadPart answered 200).
    pub fn parts_stored(&self, bucket: &str, key: &str) -> usize {
        let uri = format!("uri=/{bucket}/{key}?");
        self.log()
            .lines()
            .filter(|l| {
                l.contains("finished processing request")
                    && l.contains("method=PUT")
                    && l.contains("status=200")
                    && l.contains("partNumber=")
                    && l.contains(&uri)
            })
            .count()
    }

    fn count_puts(&self, bucket: &str, keep: impl Fn(&str) -> bool) -> BTreeMap<String, usize> {
        let marker = format!("uri=/{bucket}/");
        let mut counts = BTreeMap::new();
        for line in self.log().lines() {
            if !line.contains("finished processing request")
                || !line.contains("method=PUT")
                || !keep(line)
            {
                continue;
            }
            let Some(start) = line.find(&marker) else {
                continue;
            };
            let rest = &line[start + marker.len()..];
            let end = rest.find([' ', '}', '?']).unwrap_or(rest.len());
            if end > 0 {
                *counts.entry(percent_decode(&rest[..end])).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Environment that points an unmodified AWS SDK client (s3drop) at this server, with
    /// credentials only from the emulated IMDS.
    pub fn sdk_env(&self) -> Vec<(&'static str, String)> {
        self.sdk_env_via(&self.endpoint)
    }

    /// The same, with S3 and STS reached through `endpoint` (e.g. a fault proxy) while IMDS
    /// is reached directly.
    pub fn sdk_env_via(&self, endpoint: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", self.endpoint.clone()),
            ("AWS_ENDPOINT_URL", endpoint.to_string()),
            ("AWS_REGION", REGION.to_string()),
        ]
    }
}

impl Drop for FakeCloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fields of an `application/x-www-form-urlencoded` body (STS's requests).
pub fn form_fields(body: &str) -> BTreeMap<String, String> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let decode = |s: &str| percent_decode(&s.replace('+', " "));
            (decode(k), decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 3 <= bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A plain HTTP/1.1 GET on loopback, returning the status code.
fn http_get_status(addr: &str, path: &str) -> Result<u16> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let text = std::str::from_utf8(&head)?;
    Ok(text[9..12].parse()?)
}

/// Policy documents the world is built from.
pub mod policies {
    use super::*;

    /// EC2 may assume the instance role.
    pub fn ec2_trust() -> String {
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
        .to_string()
    }

    /// The instance role may only assume the upload role.
    pub fn instance_role_policy() -> String {
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Action": "sts:AssumeRole", "Resource": role_arn(UPLOAD_ROLE)}]})
        .to_string()
    }

    /// Trust for the upload role. On AWS this names the instance role; fakecloud 0.51 does
    /// not match a role principal against that role's sessions, so the tests trust the
    /// account and rely on the instance role's own policy (see ../shared/LOCAL-AWS.md).
    pub fn upload_trust() -> String {
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:root")},
            "Action": "sts:AssumeRole"}]})
        .to_string()
    }

    /// A trust policy that lets nobody in: "the instance role may not assume the upload role".
    pub fn upload_trust_nobody() -> String {
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::999999999999:root"},
            "Action": "sts:AssumeRole"}]})
        .to_string()
    }

    /// The upload role may write anywhere in the bucket: the session policy is what
    /// narrows it to one prefix. Besides the AWS actions (PutObject, AbortMultipartUpload)
    /// it names the emulator's own multipart actions (see [`EMULATOR_ENV`]).
    pub fn upload_role_policy(bucket: &str) -> String {
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Action": ["s3:PutObject", "s3:AbortMultipartUpload", "s3:CreateMultipartUpload",
                       "s3:UploadPart", "s3:CompleteMultipartUpload"],
            "Resource": format!("arn:aws:s3:::{bucket}/*")}]})
        .to_string()
    }

    /// Seed 000's IAM user ("Publisher"): may call GetFederationToken and write to the
    /// bucket, which a federation token can then only narrow. The emulator's multipart names
    /// are added as for the upload role.
    pub fn federation_user_policy(bucket: &str) -> String {
        json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "sts:GetFederationToken", "Resource": "*"},
            {"Effect": "Allow",
             "Action": ["s3:PutObject", "s3:AbortMultipartUpload", "s3:CreateMultipartUpload",
                        "s3:UploadPart", "s3:CompleteMultipartUpload"],
             "Resource": format!("arn:aws:s3:::{bucket}/*")}]})
        .to_string()
    }

    /// An upload role policy that forgot PutObject.
    pub fn upload_role_policy_without_put(bucket: &str) -> String {
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{bucket}/*")}]})
        .to_string()
    }
}

/// The provisioned world, and admin clients (fakecloud's root identity) to inspect it.
pub struct World {
    pub bucket: String,
    pub endpoint: String,
    pub s3: aws_sdk_s3::Client,
    pub iam: aws_sdk_iam::Client,
}

async fn admin_config(endpoint: &str) -> aws_config::SdkConfig {
    // A bound on every call: if the emulator ever stops answering (fakecloud 0.51 can
    // deadlock a GetObject of an SSE-KMS object against a concurrent write), the test
    // fails with a timeout instead of hanging the run.
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .operation_timeout(Duration::from_secs(60))
        .build();
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts)
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "fakecloud-root",
        ))
        .load()
        .await
}

impl World {
    /// Creates the bucket, the instance role (may only AssumeRole the upload role) and the
    /// upload role (PutObject on the whole bucket), as an operator would.
    pub async fn provision(fc: &FakeCloud, bucket: &str) -> Result<World> {
        let conf = admin_config(&fc.endpoint).await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&conf)
                .force_path_style(true)
                .build(),
        );
        let iam = aws_sdk_iam::Client::new(&conf);
        s3.create_bucket().bucket(bucket).send().await?;
        iam.create_role()
            .role_name(INSTANCE_ROLE)
            .assume_role_policy_document(policies::ec2_trust())
            .send()
            .await?;
        iam.put_role_policy()
            .role_name(INSTANCE_ROLE)
            .policy_name("assume-upload-role")
            .policy_document(policies::instance_role_policy())
            .send()
            .await?;
        iam.create_role()
            .role_name(UPLOAD_ROLE)
            .assume_role_policy_document(policies::upload_trust())
            .max_session_duration(3600)
            .send()
            .await?;
        let world = World {
            bucket: bucket.to_string(),
            endpoint: fc.endpoint.clone(),
            s3,
            iam,
        };
        world
            .set_upload_role_policy(&policies::upload_role_policy(bucket))
            .await?;
        Ok(world)
    }

    /// A KMS key of the account (as fakecloud's admin), for SSE-KMS; returns its ARN.
    pub async fn create_kms_key(&self) -> Result<String> {
        let conf = admin_config(&self.endpoint).await;
        let kms = aws_sdk_kms::Client::new(&conf);
        let key = kms.create_key().description("s3drop test").send().await?;
        key.key_metadata()
            .and_then(|k| k.arn())
            .map(String::from)
            .context("no key ARN")
    }

    /// An IAM user with the inline policy `document` and a long-term access key (as seed
    /// 000's template makes one): the base credentials of the non-instance sources.
    pub async fn create_user(&self, name: &str, document: &str) -> Result<Credentials> {
        self.iam.create_user().user_name(name).send().await?;
        self.iam
            .put_user_policy()
            .user_name(name)
            .policy_name("s3drop-base")
            .policy_document(document)
            .send()
            .await?;
        let key = self.iam.create_access_key().user_name(name).send().await?;
        let key = key.access_key().context("no access key")?;
        Ok(Credentials::new(
            key.access_key_id(),
            key.secret_access_key(),
            None,
            None,
            "iam-user",
        ))
    }

    pub async fn set_upload_role_policy(&self, document: &str) -> Result<()> {
        self.iam
            .put_role_policy()
            .role_name(UPLOAD_ROLE)
            .policy_name("s3drop-put")
            .policy_document(document)
            .send()
            .await?;
        Ok(())
    }

    pub async fn set_upload_trust(&self, document: &str) -> Result<()> {
        self.iam
            .update_assume_role_policy()
            .role_name(UPLOAD_ROLE)
            .policy_document(document)
            .send()
            .await?;
        Ok(())
    }

    /// HeadObject as the admin: what S3 stored with the object.
    pub async fn head(
        &self,
        key: &str,
    ) -> Result<aws_sdk_s3::operation::head_object::HeadObjectOutput> {
        Ok(self
            .s3
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await?)
    }

    /// The object's tags, sorted.
    pub async fn tags(&self, key: &str) -> Result<Vec<(String, String)>> {
        let out = self
            .s3
            .get_object_tagging()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await?;
        let mut tags: Vec<(String, String)> = out
            .tag_set()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect();
        tags.sort();
        Ok(tags)
    }

    pub async fn get_object(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.body.collect().await?.into_bytes().to_vec())),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn keys(&self) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for object in page?.contents() {
                keys.extend(object.key().map(String::from));
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Waits until `key` exists, returning its bytes.
    /// Waits until every one of `keys` is listed (no object is read meanwhile).
    pub async fn wait_for_keys(&self, keys: &[String], limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let listed = self.keys().await?;
            if keys.iter().all(|k| listed.contains(k)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{keys:?} did not all arrive within {limit:?}; keys now: {listed:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_for_object(&self, key: &str, limit: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(bytes) = self.get_object(key).await? {
                return Ok(bytes);
            }
            if Instant::now() > deadline {
                bail!(
                    "{key} did not arrive within {limit:?}; keys now: {:?}",
                    self.keys().await?
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Credentials for the upload role as the instance role would get them, with or
    /// without a session policy: used to show what the policy takes away.
    pub async fn assume_upload_role(&self, policy: Option<&str>) -> Result<Credentials> {
        let imds = aws_config::imds::credentials::ImdsCredentialsProvider::builder()
            .imds_client(
                aws_config::imds::Client::builder()
                    .endpoint(&self.endpoint)
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .build(),
            )
            .build();
        let conf = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(imds)
            .load()
            .await;
        let sts = aws_sdk_sts::Client::new(&conf);
        let out = sts
            .assume_role()
            .role_arn(role_arn(UPLOAD_ROLE))
            .role_session_name("testkit")
            .set_policy(policy.map(String::from))
            .send()
            .await?;
        let c = out.credentials().context("no credentials")?;
        Ok(Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            None,
            "testkit",
        ))
    }

    /// An S3 client signing with `credentials` (IAM evaluated, unlike the admin client).
    pub async fn s3_as(&self, credentials: Credentials) -> aws_sdk_s3::Client {
        let conf = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(credentials)
            .load()
            .await;
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&conf)
                .force_path_style(true)
                .build(),
        )
    }
}

/// A config file for s3drop in a fresh temporary directory, with `watch/` and `state/`.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub watch: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
}

impl Site {
    pub fn new(bucket: &str, extra: &str) -> Result<Site> {
        let dir = tempfile::tempdir()?;
        let watch = dir.path().join("watch");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&watch)?;
        let config = dir.path().join("s3drop.toml");
        let site = Site {
            watch,
            state,
            config,
            dir,
        };
        site.write_config(bucket, extra)?;
        Ok(site)
    }

    pub fn write_config(&self, bucket: &str, extra: &str) -> Result<()> {
        let role = format!("role_arn = {:?}\n", role_arn(UPLOAD_ROLE));
        self.write_config_without_role(bucket, &format!("{role}{extra}"))
    }

    /// The config without `role_arn` (e.g. for `session_type = "federation_token"`).
    pub fn write_config_without_role(&self, bucket: &str, extra: &str) -> Result<()> {
        std::fs::write(
            &self.config,
            format!(
                "watch_dir = {:?}\nstate_dir = {:?}\nbucket = {bucket:?}\n\
                 settle_seconds = 1\n{extra}\n",
                self.watch, self.state,
            ),
        )?;
        Ok(())
    }

    /// `s3drop <args> --config <this site>` with the SDK pointed at `fc` and no access
    /// keys in the environment.
    pub fn command(&self, s3drop: &Path, fc: &FakeCloud, args: &[&str]) -> Command {
        self.command_with(&[], s3drop, &fc.sdk_env(), args)
    }

    /// The same, run through `wrapper` (e.g. `setpriv …`) with the given SDK variables.
    pub fn command_with(
        &self,
        wrapper: &[&str],
        s3drop: &Path,
        env: &[(&'static str, String)],
        args: &[&str],
    ) -> Command {
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(s3drop);
                cmd
            }
            None => Command::new(s3drop),
        };
        cmd.args(args).arg("--config").arg(&self.config);
        without_callers_aws(&mut cmd)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env(EMULATOR_ENV, "1")
            .stdin(Stdio::null());
        cmd
    }
}

/// Takes the caller's AWS credentials, profile and default region out of `cmd`'s
/// environment, so a test's child sees only what the test gives it.
pub fn without_callers_aws(cmd: &mut Command) -> &mut Command {
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// A running `s3drop run`, its stderr (JSON logs) collected to a file. Killed on drop.
pub struct Daemon {
    child: Child,
    log_path: PathBuf,
}

impl Daemon {
    pub fn start(site: &Site, s3drop: &Path, fc: &FakeCloud) -> Result<Daemon> {
        Daemon::start_with_env(site, s3drop, &fc.sdk_env())
    }

    /// `s3drop run` with the given SDK variables (e.g. [`FakeCloud::sdk_env_via`] a proxy).
    pub fn start_with_env(
        site: &Site,
        s3drop: &Path,
        env: &[(&'static str, String)],
    ) -> Result<Daemon> {
        Daemon::spawn(
            site,
            site.command_with(&[], s3drop, env, &["run", "--log-format", "json"]),
        )
    }

    /// Starts `command` (an `s3drop run …` built with [`Site::command_with`]), logging to
    /// a new file in the site.
    pub fn spawn(site: &Site, mut command: Command) -> Result<Daemon> {
        let log_path = unique(site.dir.path().join("s3drop-run.log"));
        let log = std::fs::File::create(&log_path)?;
        let child = command
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start s3drop")?;
        Ok(Daemon { child, log_path })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file the daemon's output goes to.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Sends `signal` (e.g. "-HUP") to the daemon.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} failed");
        Ok(())
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until s3drop emits the event `name` whose fields include every `(field,
    /// value)` of `with` (values compared as text), and returns it. The event's name and
    /// fields are s3drop's interface to machines; the wording of its message is not.
    pub fn wait_for_event(
        &mut self,
        name: &str,
        with: &[(&str, &str)],
        limit: Duration,
    ) -> Result<serde_json::Value> {
        let matches = |v: &serde_json::Value| {
            v["event"] == name
                && with.iter().all(|(field, want)| match &v[*field] {
                    serde_json::Value::String(s) => s == want,
                    other => other.to_string().as_str() == *want,
                })
        };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(found) = self.events(name).into_iter().find(matches) {
                return Ok(found);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "s3drop exited ({status}) before the event {name} {with:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "s3drop did not emit the event {name} {with:?} within {limit:?}:\n{}",
            self.log()
        )
    }

    /// Waits until the daemon is READY (the backlog is queued and the watch is up).
    pub fn wait_until_ready(&mut self, limit: Duration) -> Result<()> {
        self.wait_for_event("ready", &[], limit).map(drop)
    }

    /// SIGTERM, then wait for the exit status.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        self.signal("-TERM")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("s3drop did not stop after SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The events named `name` that s3drop logged (JSON lines whose `event` is `name`).
    pub fn events(&self, name: &str) -> Vec<serde_json::Value> {
        events_in(&self.log(), name)
    }
}

/// The JSON lines of a daemon's `log` for the event `name` (its `event` field: the name
/// is s3drop's interface to machines, the message's wording is not).
pub fn events_in(log: &str, name: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == name)
        .collect()
}

/// `len` bytes that differ per `seed` and are not all one byte (xorshift), so a swapped
/// or truncated upload shows.
pub fn content(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn unique(path: PathBuf) -> PathBuf {
    let mut candidate = path.clone();
    let mut n = 0;
    while candidate.exists() {
        n += 1;
        candidate = path.with_extension(format!("{n}.log"));
    }
    candidate
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the daemon said (its end), so a failure in CI can be
        // read without running it again.
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!(
                "--- the daemon's log ({} lines, the last {} here) ---\n{}\n--- end ---",
                lines.len(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}
