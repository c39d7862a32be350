//! The credential side, end to end against fakecloud with real clients: the scoped session
//! handed to aws-cli (credential_process, `export` lines, a credentials file, `exec`),
//! narrowed to a sub-prefix or one key; base credentials from the environment and from a
//! profile file (an IAM user made through the IAM API) with IMDS switched off; and
//! GetFederationToken (seed 000), where the emulator can only partly decide (see the test).

use std::process::{Command, Output};

use crate::common::*;
use s3drop_testkit::{Daemon, FakeCloud, Site, World, object_key, policies};

/// An IMDS endpoint nothing listens on: any use of IMDS fails.
const NO_IMDS: &str = "http://127.0.0.1:9";

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts the command's outcome and that its output says each of `needles`; returns it.
fn report_holds(out: &Output, success: bool, needles: &[&str]) -> String {
    let report = text(out);
    assert_eq!(out.status.success(), success, "{report}");
    for needle in needles {
        assert!(report.contains(needle), "{needle:?} missing: {report}");
    }
    report
}

fn assert_written(out: &Output, key: &str) {
    assert!(
        out.status.success(),
        "write to {key} refused: {}",
        text(out)
    );
}

fn assert_denied(out: &Output, key: &str) {
    assert!(
        !out.status.success(),
        "write to {key} allowed: {}",
        text(out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AccessDenied"), "{key}: {}", text(out));
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_cli_writes_through_credential_process_only_where_the_session_may() {
    let (fc, world, site) = setup_world().await;
    let cp = |args: &str, key: &str| cp_via_credential_process(&fc, &site, args, key);

    // The whole prefix.
    let inside = object_key("cli/one.txt");
    assert_written(&cp("", &inside), "under the prefix");
    assert_eq!(
        world.get_object(&inside).await.unwrap().unwrap(),
        format!("to {inside}\n").into_bytes()
    );
    assert_denied(&cp("", "elsewhere/one.txt"), "outside the prefix");

    // One key (seed 001): that key only, not a sibling, not the prefix root.
    let one = "--key a/b.txt";
    assert_written(&cp(one, &object_key("a/b.txt")), "the key");
    assert_denied(&cp(one, &object_key("a/c.txt")), "a sibling");
    assert_denied(&cp(one, &object_key("root.txt")), "the prefix root");
    assert_denied(&cp(one, &object_key("a/b.txt2")), "a longer key");

    // A key with IAM's wildcard in it grants that very key, not what the wildcard matches.
    let wild = "--key 'we*rd'";
    assert_written(&cp(wild, &object_key("we*rd")), "we*rd itself");
    assert_denied(&cp(wild, &object_key("we-other-rd")), "what * matches");

    // A sub-prefix: under it, not beside it.
    let sub = "--prefix batch";
    assert_written(&cp(sub, &object_key("batch/x/1.txt")), "under batch/");
    assert_denied(&cp(sub, &object_key("batch-other/1.txt")), "batch-other/");
}

#[tokio::test(flavor = "multi_thread")]
async fn env_lines_and_a_credentials_file_work_with_aws_cli() {
    let (fc, _world, site) = setup_world().await;
    let dir = site.dir.path();

    // eval "$(s3drop credentials --format env)" then aws s3 cp (seed 003).
    let script = format!(
        "eval \"$({S3DROP} credentials --config {} --format env)\" && \
         aws s3 cp --only-show-errors {} s3://{BUCKET}/{}",
        site.config.display(),
        site.config.display(),
        object_key("from-env.toml")
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(&script);
    let out = with_aws_env(&fc, &mut cmd).output().unwrap();
    assert_written(&out, "via export lines");

    // --format ini --output FILE, read by aws-cli through AWS_SHARED_CREDENTIALS_FILE (seed 004).
    let file = dir.join("credentials");
    let out = s3drop_cmd(
        &fc,
        &site,
        &["credentials", "--format", "ini", "--profile-name", "up"],
    )
    .arg("--output")
    .arg(&file)
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        out.stdout.is_empty(),
        "with --output nothing goes to stdout"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the credentials file is private");
    let env = [
        ("AWS_SHARED_CREDENTIALS_FILE", file.to_str().unwrap()),
        ("AWS_PROFILE", "up"),
    ];
    assert_written(
        &cp_to(&fc, &env, dir, &object_key("from-ini.txt")),
        "via the ini file",
    );
    assert_denied(
        &cp_to(&fc, &env, dir, "elsewhere/from-ini.txt"),
        "outside, via ini",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_runs_the_command_with_the_session_and_returns_its_status() {
    let (fc, world, site) = setup_world().await;
    let payload = site.dir.path().join("exec.txt");
    std::fs::write(&payload, b"exec\n").unwrap();
    let key = object_key("nightly/exec.txt");
    let target = format!("s3://{BUCKET}/{key}");
    // The caller's own profile is removed: it would otherwise win over nothing, or fail.
    let out = s3drop_cmd(&fc, &site, &["exec", "--key", "nightly/exec.txt", "--"])
        .args(["aws", "s3", "cp", "--only-show-errors"])
        .arg(&payload)
        .arg(&target)
        .env("AWS_PROFILE", "no-such-profile")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .output()
        .unwrap();
    assert_written(&out, &key);
    assert_eq!(world.get_object(&key).await.unwrap().unwrap(), b"exec\n");

    // The narrowed session holds in the child too.
    let out = s3drop_cmd(&fc, &site, &["exec", "--key", "nightly/exec.txt", "--"])
        .args(["aws", "s3", "cp", "--only-show-errors"])
        .arg(&payload)
        .arg(format!("s3://{BUCKET}/{}", object_key("nightly/other.txt")))
        .env("AWS_CONFIG_FILE", "/dev/null")
        .output()
        .unwrap();
    assert_denied(&out, "a key the exec session does not name");

    // The command's exit status, and its stdin and stdout, are its own.
    let mut child = s3drop_cmd(&fc, &site, &["exec", "--", "sh", "-c"])
        .arg("read line; echo \"got $line, keys ${AWS_ACCESS_KEY_ID:+set}\"; exit 3")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "got hello, keys set\n"
    );

    let out = s3drop_cmd(&fc, &site, &["exec", "--", "/no/such/program"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_chain_is_one_line_naming_the_link_and_no_secret() {
    let (fc, world, site) = setup_world().await;
    world
        .set_upload_trust(&policies::upload_trust_nobody())
        .await
        .unwrap();
    for args in [&["credentials"][..], &["exec", "--", "true"]] {
        let out = s3drop_cmd(&fc, &site, args).output().unwrap();
        assert!(!out.status.success(), "{}", text(&out));
        assert!(out.stdout.is_empty(), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("s3drop: ")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains("✗ assume upload role:"), "{err}");
    }
    let out = s3drop_cmd(&fc, &site, &["credentials", "--key", "../escape"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--key"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_and_exec_log_no_secret_even_at_trace_level() {
    let (fc, _world, site) = setup_world().await;
    let out = s3drop_cmd(&fc, &site, &["credentials"])
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = doc["SecretAccessKey"].as_str().unwrap();
    let token = doc["SessionToken"].as_str().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.lines().count() > 50, "trace level really logged: {log}");
    assert!(!log.contains(secret), "the secret key is in the log");
    assert!(!log.contains(token), "the session token is in the log");

    let out = s3drop_cmd(&fc, &site, &["exec", "--", "sh", "-c"])
        .arg("printf '%s\\n%s' \"$AWS_SECRET_ACCESS_KEY\" \"$AWS_SESSION_TOKEN\"")
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let child = String::from_utf8_lossy(&out.stdout).to_string();
    let (secret, token) = child.split_once('\n').unwrap();
    assert!(
        secret.len() > 10 && token.len() > 10,
        "the child got the session"
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.lines().count() > 50, "trace level really logged");
    assert!(
        !log.contains(secret) && !log.contains(token),
        "a secret is in exec's log"
    );
    for needle in ["<SecretAccessKey>", "<SessionToken>"] {
        assert!(!log.contains(needle), "exec's log shows {needle}");
    }

    // And on success, at the default level, neither says anything.
    let out = s3drop_cmd(&fc, &site, &["credentials"]).output().unwrap();
    let quiet: Vec<_> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains(s3drop_testkit::EMULATOR_ENV))
        .map(String::from)
        .collect();
    assert!(quiet.is_empty(), "credentials logged on success: {quiet:?}");
}

/// The IAM user of seed 002 (`aws configure --profile sts-user`): its long-term keys may
/// only assume the upload role.
async fn sts_user(world: &World) -> aws_credential_types::Credentials {
    world
        .create_user("sts-user", &policies::instance_role_policy())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn environment_and_profile_sources_work_off_ec2() {
    let (fc, world, site) = setup_world().await;
    let user = sts_user(&world).await;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim();

    // credential_source = "Environment", IMDS unreachable: check passes, skipping IMDS,
    // and proves the write under the prefix and the denial outside it.
    site.write_config(
        BUCKET,
        "credential_source = \"Environment\"\nkey_prefix = \"{hostname}/\"",
    )
    .unwrap();
    let out = with_keys(&mut off_ec2(&fc, &site, &["check"]), &user)
        .output()
        .unwrap();
    let report = report_holds(
        &out,
        true,
        &[
            "- instance metadata (IMDSv2): skipped",
            "✔ environment credentials: long-term access key",
            &format!("✔ write under prefix: s3://{BUCKET}/{host}/"),
            "✔ scope holds",
        ],
    );
    assert!(!report.contains(user.secret_access_key()), "{report}");

    // The daemon uploads under {hostname}/ with those keys.
    let mut run = off_ec2(&fc, &site, &["run", "--log-format", "json"]);
    with_keys(&mut run, &user);
    upload_one(&site, &world, run, &format!("{host}/off-ec2.txt")).await;

    // Without the keys the daemon does not wait for them: it exits non-zero, saying why.
    let mut child = off_ec2(&fc, &site, &["run", "--log-format", "json"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + ARRIVAL;
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "run waits for keys that never come"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let out = child.wait_with_output().unwrap();
    report_holds(&out, false, &["no base credentials from credential_source"]);

    // check --json says the same, IMDS as skipped (not failed, not passed).
    let out = with_keys(&mut off_ec2(&fc, &site, &["check", "--json"]), &user)
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], true, "{doc:#}");
    let imds = &doc["checks"][3];
    assert_eq!(imds["check"], "instance metadata (IMDSv2)", "{doc:#}");
    assert_eq!(
        (&imds["ok"], &imds["skipped"]),
        (&true.into(), &true.into())
    );

    // source_profile: the same keys in a credentials file as `aws configure` writes it.
    let credentials = site.dir.path().join("aws-credentials");
    std::fs::write(
        &credentials,
        format!(
            "[sts-user]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            user.access_key_id(),
            user.secret_access_key()
        ),
    )
    .unwrap();
    let with_profile = |extra: &str, args: &[&str]| {
        let config = format!("source_profile = \"sts-user\"\n{extra}");
        site.write_config(BUCKET, &config).unwrap();
        let mut cmd = off_ec2(&fc, &site, args);
        cmd.env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
            .env("AWS_CONFIG_FILE", "/dev/null");
        cmd
    };
    let check_with_profile = |extra: &str| with_profile(extra, &["check"]).output().unwrap();
    report_holds(
        &check_with_profile("key_prefix = \"{hostname}/p/\""),
        true,
        &[
            "✔ source profile: long-term access key",
            &format!("s3://{BUCKET}/{host}/p/"),
            "✔ scope holds",
        ],
    );

    // Off EC2, {instance_id} cannot be filled: the error says to use {hostname}.
    let run = with_profile(
        "key_prefix = \"{hostname}/p/\"",
        &["run", "--log-format", "json"],
    );
    upload_one(&site, &world, run, &format!("{host}/p/from-profile.txt")).await;

    report_holds(&check_with_profile(""), false, &["{hostname}"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_default_source_environment_keys_are_still_ignored() {
    let (fc, world, site) = setup_world().await;
    let user = sts_user(&world).await;
    let out = s3drop_cmd(&fc, &site, &["check"])
        .env("AWS_ACCESS_KEY_ID", user.access_key_id())
        .env("AWS_SECRET_ACCESS_KEY", user.secret_access_key())
        .output()
        .unwrap();
    report_holds(
        &out,
        true,
        &["✔ instance role: temporary credentials received from IMDS"],
    );
}

/// GetFederationToken (seed 000) from an IAM user's keys. fakecloud 0.51 answers the call
/// and stores the policy, but under strict IAM it gives the federated user no identity
/// policies, so every request the token signs is denied (AWS would allow what both the
/// user's policies and the session policy allow): the uploads run with `--iam soft`, which
/// only logs denials. What is proven here: the call s3drop makes carries the session policy,
/// the name and the duration (recorded on the wire), the daemon uploads with the token's
/// credentials, and the combinations AWS refuses are refused with the reason. What the
/// policy allows on AWS is proven by the policy's unit tests (src/auth/policy.rs).
#[tokio::test(flavor = "multi_thread")]
async fn federation_token_carries_the_policy_and_the_daemon_uploads_with_it() {
    let fc = FakeCloud::start_soft_iam().unwrap();
    let world = World::provision(&fc, BUCKET).await.unwrap();
    let user = world
        .create_user("publisher", &policies::federation_user_policy(BUCKET))
        .await
        .unwrap();
    let proxy = s3drop_testkit::proxy::FaultProxy::start(&fc.endpoint, 0)
        .await
        .unwrap();
    proxy.record_posts();
    let site = Site::new(BUCKET, "").unwrap();
    site.write_config_without_role(
        BUCKET,
        "session_type = \"federation_token\"\ncredential_source = \"Environment\"\n\
         key_prefix = \"{hostname}/\"\nsession_duration_seconds = 7200",
    )
    .unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim().to_string();
    let mut run = site.command_with(
        &[],
        s3drop(),
        &[
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", NO_IMDS.to_string()),
            ("AWS_ENDPOINT_URL", proxy.endpoint.clone()),
            ("AWS_REGION", s3drop_testkit::REGION.to_string()),
        ],
        &["run", "--log-format", "json"],
    );
    with_keys(&mut run, &user);
    upload_one(&site, &world, run, &format!("{host}/federated.txt")).await;

    let calls: Vec<_> = proxy
        .posts()
        .iter()
        .map(|body| s3drop_testkit::form_fields(body))
        .filter(|f| f.get("Action").map(String::as_str) == Some("GetFederationToken"))
        .collect();
    assert_eq!(calls.len(), 1, "one token minted: {:?}", proxy.posts());
    let call = &calls[0];
    let expected = s3drop::auth::policy::session_policy(
        "aws",
        BUCKET,
        s3drop::auth::policy::Writable::Under(&format!("{host}/")),
        &Default::default(),
        true,
    )
    .unwrap();
    assert_eq!(
        call["Policy"], expected,
        "the session policy goes with the call"
    );
    assert_eq!(call["DurationSeconds"], "7200");
    let name = &call["Name"];
    assert!(
        name.starts_with("s3drop-") && (2..=32).contains(&name.len()),
        "{name}"
    );
    assert!(!calls.iter().any(|c| c.contains_key("RoleArn")));

    // Temporary base credentials (a role session) are refused before STS is asked, with
    // the reason; fakecloud would not refuse them, AWS does.
    let role_session = world.assume_upload_role(None).await.unwrap();
    let out = off_ec2(&fc, &site, &["check"])
        .env("AWS_ACCESS_KEY_ID", role_session.access_key_id())
        .env("AWS_SECRET_ACCESS_KEY", role_session.secret_access_key())
        .env("AWS_SESSION_TOKEN", role_session.session_token().unwrap())
        .output()
        .unwrap();
    report_holds(
        &out,
        false,
        &["✗ federation token:", "long-term access keys"],
    );

    // The instance role + federation_token: refused by the config validation.
    site.write_config_without_role(BUCKET, "session_type = \"federation_token\"")
        .unwrap();
    let out = s3drop_cmd(&fc, &site, &["validate"]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("session credentials"), "{}", text(&out));
}

/// `user`'s keys as the environment source reads them.
fn with_keys<'a>(
    cmd: &'a mut Command,
    user: &aws_credential_types::Credentials,
) -> &'a mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", user.access_key_id())
        .env("AWS_SECRET_ACCESS_KEY", user.secret_access_key())
}

/// Starts the daemon `run`, drops one file and waits for it as `key`, then stops the
/// daemon.
async fn upload_one(site: &Site, world: &World, run: Command, key: &str) {
    let mut daemon = Daemon::spawn(site, run).unwrap();
    let name = key.rsplit('/').next().unwrap();
    std::fs::write(site.watch.join(name), key.as_bytes()).unwrap();
    let stored = world.wait_for_object(key, ARRIVAL).await.unwrap();
    assert_eq!(stored, key.as_bytes());
    assert!(daemon.stop().unwrap().success());
}

async fn setup_world() -> (FakeCloud, World, Site) {
    s3drop_testkit::setup(BUCKET, "").await
}

/// `s3drop ARGS --config SITE` (before any `--`) with the SDK pointed at the emulator,
/// IMDS included.
fn s3drop_cmd(fc: &FakeCloud, site: &Site, args: &[&str]) -> Command {
    let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
    let mut cmd = Command::new(s3drop());
    cmd.args(&args[..split])
        .arg("--config")
        .arg(&site.config)
        .args(&args[split..]);
    with_aws_env(fc, &mut cmd);
    cmd
}

/// The same, off EC2: IMDS unreachable.
fn off_ec2(fc: &FakeCloud, site: &Site, args: &[&str]) -> Command {
    let mut cmd = s3drop_cmd(fc, site, args);
    cmd.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", NO_IMDS);
    cmd
}

/// aws-cli children see the emulator and no shared files of the caller's.
fn with_aws_env<'a>(fc: &FakeCloud, cmd: &'a mut Command) -> &'a mut Command {
    s3drop_testkit::without_callers_aws(cmd)
        .envs(fc.sdk_env())
        .env(s3drop_testkit::EMULATOR_ENV, "1")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
}
