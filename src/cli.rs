//! The command line: raw flags here, everything else validated by [`Config`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::logging::{self, LogFormat};

const ABOUT: &str = "Upload every file dropped in a directory to S3, with least privilege.";

const LONG_ABOUT: &str = "\
Upload every file dropped in a directory to S3, with least privilege.

s3drop runs on an EC2 instance. It takes the instance role's temporary credentials from
the instance metadata service (IMDSv2 only), calls sts:AssumeRole into a dedicated upload
role with an inline session policy that allows writing under one key prefix and nothing
else (s3:PutObject, s3:AbortMultipartUpload, and what the object options need), watches a
drop directory, and uploads each file once it is complete (closed after writing, or
renamed into place) to s3://BUCKET/PREFIX/<path relative to watch_dir>.
S3 verifies each upload against a CRC32C checksum; uploads are recorded in state_dir so a
restart does not send them again.

Off EC2, or with an IAM user's keys, the config chooses another source of base credentials
(credential_source = \"Environment\", source_profile = \"NAME\") and, for an IAM user,
session_type = \"federation_token\" (sts:GetFederationToken with the same policy).
`s3drop credentials` and `s3drop exec` hand the scoped session (or one narrowed to a
sub-prefix or a single key) to other programs: aws-cli, boto3, rclone, any SDK.

The SDK's own variables apply: AWS_REGION, AWS_ENDPOINT_URL,
AWS_EC2_METADATA_SERVICE_ENDPOINT, AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE. With the
default source, access keys in the environment are ignored: credentials come only from
IMDS. RUST_LOG sets the log filter (default: s3drop=info,warn).

The config file must be owned by root or the user s3drop runs as and not writable by group
or others (it chooses the role, the bucket and deletions); S3DROP_INSECURE_CONFIG=1
accepts it anyway, for development.";

const AFTER_HELP: &str = "\
Minimal config (/etc/s3drop/s3drop.toml):
    watch_dir = \"/var/spool/s3drop\"
    bucket    = \"my-drop-bucket\"
    role_arn  = \"arn:aws:iam::123456789012:role/s3drop-upload\"

Then:  s3drop check    # prove the chain, first broken link named
       s3drop run      # the daemon (systemd runs this)

Hand the session to other programs:
    # ~/.aws/config: aws-cli and the SDKs refresh it themselves
    [profile drop]
    credential_process = s3drop credentials --config /etc/s3drop/s3drop.toml
    eval \"$(s3drop credentials --format env)\"           # export AWS_ACCESS_KEY_ID=... lines
    s3drop credentials --key reports/today.csv          # a session for one object only
    s3drop exec --prefix batch/ -- aws s3 cp out.tar s3://my-drop-bucket/i-0abc/batch/";

#[derive(Debug, Parser)]
#[command(name = "s3drop", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon in the foreground until SIGTERM or SIGINT.
    #[command(long_about = run_help())]
    Run(ConfigArg),
    /// Check the whole chain (config, directories, IMDS, AssumeRole, scoped writes) and
    /// exit non-zero naming the first broken link.
    #[command(long_about = "\
Check the whole chain and exit non-zero naming the first broken link: the config, watch_dir
readable, state_dir writable, IMDSv2 answering, the instance role's credentials,
sts:AssumeRole into role_arn with the session policy, a probe PUT under the prefix
(PREFIX/s3drop-check-probe, overwritten each time), and a probe PUT outside the prefix that
must be denied: proof that the session policy confines the session.")]
    Check(CheckArgs),
    /// Validate the config file only (no network); for systemd's ExecStartPre=.
    Validate(ConfigArg),
    /// Mint a scoped session and print it on stdout for another program.
    #[command(long_about = CREDENTIALS_ABOUT)]
    Credentials(CredentialsArgs),
    /// Run a command with a scoped session in its environment.
    #[command(long_about = EXEC_ABOUT)]
    Exec(ExecArgs),
    /// What the daemon is doing, and every file waiting on a failure.
    #[command(long_about = "\
What the daemon is doing: up or not (since when), uploads, the queue and its oldest file,
the session's expiry, and every file waiting on a failure an operator must fix (denied,
conflict, unreadable, ...), newest first. The running daemon answers on a socket in
state_dir; when it does not run, the ledger tells what is recorded. Exit 0 when no file
waits on a failure, 1 when one does, 2 when it cannot tell.")]
    Status(StatusArgs),
    /// Look after the ledger (state_dir/ledger.redb).
    #[command(subcommand)]
    Ledger(LedgerCommand),
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Move a damaged ledger aside so the next start builds a new one.
    #[command(long_about = "\
Move the ledger (state_dir/ledger.redb) aside, to ledger.redb.damaged-<unix time> in the same
directory, so that the next start builds a new one. For a ledger s3drop says is damaged (a
failing disk). What it costs: the new ledger knows nothing, so every file still in watch_dir
is uploaded once more (each once), and multipart uploads in progress start over (their parts
stay in S3 until the bucket's AbortIncompleteMultipartUpload lifecycle rule removes them).
Refused while s3drop runs with this state_dir: stop it first (systemctl stop s3drop).")]
    Reset(ConfigArg),
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// One JSON document for machines.
    #[arg(long)]
    json: bool,
}

const CREDENTIALS_ABOUT: &str = "\
Mint a fresh scoped session and print it on stdout (and nowhere else), for another program.

It walks the same chain as `run` (base credentials, then AssumeRole or GetFederationToken
with the session policy): the session may write under the configured prefix only, or under
a narrower one (--prefix), or exactly one key (--key). Formats:
  json  the AWS SDKs' credential_process output; in ~/.aws/config:
            [profile drop]
            credential_process = s3drop credentials --config /etc/s3drop/s3drop.toml
        aws-cli, boto3, rclone and every SDK then use, and refresh, the scoped session.
  env   export lines: eval \"$(s3drop credentials --format env)\"
  ini   a shared-credentials-file section ([NAME], aws_session_token, ...); with --output
        FILE it is written atomically, mode 0600.
With broker = true and the daemon running, the daemon answers instead (its own session, or
one it minted once for this --prefix/--key): no IMDS or STS call per invocation. Without a
daemon, or with --duration, the session is minted here as above.
On success nothing is logged; on failure one line names the broken link, as `check` does,
and the exit status is non-zero.";

const EXEC_ABOUT: &str = "\
Run COMMAND with the scoped session. s3drop replaces itself with COMMAND, so stdin, stdout,
stderr, signals and the exit status are COMMAND's own.

With broker = true and the daemon running, COMMAND is registered with the daemon and gets
AWS_CONTAINER_CREDENTIALS_FULL_URI (a loopback URL the daemon serves) and
AWS_CONTAINER_AUTHORIZATION_TOKEN (random, its own) instead of keys: every AWS SDK and
aws-cli fetch the session there and refresh it themselves, so COMMAND keeps working past
the one-hour limit of a role-chained session. The token opens nothing once COMMAND exits
(or after --max-duration). COMMAND sees no shared config or credentials file
(AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE are /dev/null), so no profile of the
caller's can outrank the scoped session.

Otherwise (no broker, no daemon, or --duration) the session is minted here and put in
COMMAND's environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
AWS_CREDENTIAL_EXPIRATION, AWS_REGION; the caller's AWS_PROFILE and own keys removed). It
lasts --duration (default session_duration_seconds) and is not refreshed.

Example: s3drop exec --key nightly/db.dump -- aws s3 cp db.dump s3://BUCKET/PREFIX/nightly/db.dump";

/// Which part of the configured prefix a handed-out session may write.
#[derive(Debug, clap::Args)]
struct ReachArgs {
    /// Only this one object: the configured prefix + KEY (relative; no `..`, no leading `/`).
    #[arg(long, value_name = "KEY", conflicts_with = "prefix")]
    key: Option<String>,
    /// Only under the configured prefix + SUB/ (relative; a trailing `/` is added).
    #[arg(long, value_name = "SUB")]
    prefix: Option<String>,
    /// Session length in seconds: 900-3600 with assume_role, 900-129600 with
    /// federation_token [default: session_duration_seconds].
    #[arg(long, value_name = "SECONDS")]
    duration: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct CredentialsArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[arg(long, value_enum, default_value_t = crate::handoff::Format::Json)]
    format: crate::handoff::Format,
    #[command(flatten)]
    reach: ReachArgs,
    /// The section name with --format ini.
    #[arg(long, value_name = "NAME", default_value = "s3drop")]
    profile_name: String,
    /// Write to FILE (atomically, mode 0600) instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ExecArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    reach: ReachArgs,
    /// With the broker: stop serving the command's sessions after SECONDS even if it still
    /// runs [default: until it exits].
    #[arg(long, value_name = "SECONDS")]
    max_duration: Option<u64>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

const RUN_ABOUT: &str = "\
Run the daemon in the foreground until SIGTERM or SIGINT.

At start: validates the config, checks watch_dir, state_dir (and move_to), starts watching
and queues the files already in watch_dir (then it is ready: systemd's READY=1), reads the
instance id and region from IMDS and assumes the upload role with the prefix-scoped session
policy, then uploads the queue and each new file as it completes. While IMDS or STS cannot
be reached it keeps retrying (files stay queued; the status line says why); a refusal, or
base credentials missing from the environment or profile that the config names, exits
non-zero with the cause. On SIGTERM it stops taking new files, lets uploads in flight
finish within shutdown_timeout_seconds, and exits 0. SIGHUP rescans watch_dir and retries
failed files now, and a lapsed session (it does not reload the config). A fatal error (a
task that dies, a ledger that can no longer be written) stops it the same way and exits
non-zero with the cause.";

/// `run --help`: what it does, then every config key (from the one reference).
fn run_help() -> String {
    format!("{RUN_ABOUT}\n\n{}", crate::config::reference::help_text())
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print one JSON document ({"ok": bool, "checks": [{check, ok, detail, fix}]}) for
    /// machines instead of lines for people.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// Config file (TOML).
    #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, env = "S3DROP_CONFIG")]
    config: PathBuf,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.command {
        Command::Run(_) => logging::DAEMON_FILTER,
        Command::Check(_)
        | Command::Validate(_)
        | Command::Credentials(_)
        | Command::Exec(_)
        | Command::Status(_)
        | Command::Ledger(_) => logging::QUIET_FILTER,
    };
    logging::init(cli.log_format, filter);
    match cli.command {
        Command::Validate(args) => match Config::load(&args.config) {
            Ok(_) => {
                println!("{} is valid", args.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&anyhow::Error::new(e)),
        },
        Command::Run(args) => {
            let result = load(&args.config)
                .and_then(|config| runtime()?.block_on(crate::daemon::run(config)));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if is_damaged_ledger(&e) => {
                    fail(&e);
                    ExitCode::from(DAMAGED_LEDGER_EXIT)
                }
                Err(e) => fail(&e),
            }
        }
        Command::Credentials(args) => match credentials(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::Exec(args) => exec(args),
        Command::Status(args) => status(&args),
        Command::Ledger(LedgerCommand::Reset(args)) => {
            let reset = load(&args.config)
                .and_then(|config| Ok(crate::ledger::Ledger::reset(&config.state_dir)?));
            match reset {
                Ok(aside) => {
                    println!(
                        "moved the ledger aside to {}; the next start builds a new one, and \
                         every file still in watch_dir is uploaded once more",
                        aside.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Check(args) => {
            let format = if args.json {
                crate::check::Format::Json
            } else {
                crate::check::Format::Text
            };
            let run = crate::check::run(&args.config.config, format, std::io::stdout());
            match runtime() {
                Ok(rt) if rt.block_on(run) => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(e) => fail(&e),
            }
        }
    }
}

/// `credentials`: the session on stdout (or in a file) and nothing else.
fn credentials(args: CredentialsArgs) -> anyhow::Result<()> {
    use crate::handoff;
    handoff::check_profile_name(&args.profile_name)?;
    let handed = handoff_session(&args.config.config, &args.reach)?;
    let text = handoff::render(&handed, args.format, &args.profile_name);
    match &args.output {
        Some(path) => handoff::write_private(path, &text)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display())),
        None => {
            let mut out = std::io::stdout().lock();
            std::io::Write::write_all(&mut out, text.as_bytes())?;
            Ok(std::io::Write::flush(&mut out)?)
        }
    }
}

/// `status`: 0 nothing failed, 1 something did, 2 cannot tell.
fn status(args: &StatusArgs) -> ExitCode {
    let snapshot = load(&args.config.config)
        .map_err(|e| format!("{e:#}"))
        .and_then(|config| crate::status::snapshot(&config));
    let snapshot = match snapshot {
        Ok(snapshot) => snapshot,
        Err(e) => {
            eprintln!("s3drop: error: cannot tell: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    let printed = if args.json {
        serde_json::to_writer_pretty(&mut out, &snapshot)
            .map_err(std::io::Error::other)
            .and_then(|()| std::io::Write::write_all(&mut out, b"\n"))
    } else {
        crate::status::print(&snapshot, &mut out)
    };
    match printed {
        Err(_) => ExitCode::from(2),
        Ok(()) if snapshot.failed_total > 0 => ExitCode::from(1),
        Ok(()) => ExitCode::SUCCESS,
    }
}

/// `exec`: returns only if the command could not be started.
fn exec(args: ExecArgs) -> ExitCode {
    use crate::handoff::{self, Registration};
    let prepared = load(&args.config.config).and_then(|config| {
        let reach = handoff::reach(args.reach.key.as_deref(), args.reach.prefix.as_deref())?;
        Ok((config, reach, runtime()?))
    });
    let (config, reach, rt) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => return fail(&e),
    };
    let mut not_served = None;
    if args.reach.duration.is_none()
        && let Some(socket) = &config.broker
    {
        match rt.block_on(handoff::register(socket, &reach, args.max_duration)) {
            Registration::Served(endpoint) => {
                return cannot_run(
                    &args.command,
                    handoff::exec_with_endpoint(&endpoint, &args.command),
                );
            }
            Registration::Refused(e) => return fail(&anyhow::Error::new(e)),
            Registration::NotServed(why) => not_served = Some(why),
        }
    }
    let handed = match rt.block_on(handoff::mint(&config, reach, args.reach.duration)) {
        Ok(handed) => handed,
        Err(e) => return fail(&anyhow::Error::new(e)),
    };
    if let Some(why) = not_served {
        let until = handed
            .credentials
            .expiry()
            .map_or("never".into(), crate::message::rfc3339);
        tracing::warn!(
            "no credential broker served this exec ({why}): {} gets a session that is not \
             refreshed and expires at {until}",
            args.command[0].to_string_lossy()
        );
    }
    cannot_run(&args.command, handoff::exec(&handed, &args.command))
}

/// `command` could not be started: says why; the exit status a shell would give.
fn cannot_run(command: &[OsString], error: std::io::Error) -> ExitCode {
    eprintln!(
        "s3drop: error: cannot run {}: {error}",
        command[0].to_string_lossy()
    );
    // As shells do: 127 for a command not found, 126 for one that cannot be run.
    ExitCode::from(if error.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

/// Loads the config and mints the session `args` ask for.
fn handoff_session(config: &Path, args: &ReachArgs) -> anyhow::Result<crate::handoff::Handed> {
    let config = load(config)?;
    let reach = crate::handoff::reach(args.key.as_deref(), args.prefix.as_deref())?;
    let minting = crate::handoff::session(&config, reach, args.duration);
    Ok(runtime()?.block_on(minting)?)
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `run`'s exit status for a damaged ledger (sysexits' EX_DATAERR): the unit's
/// `RestartPreventExitStatus=` names it, since restarting cannot help; an operator must
/// run `s3drop ledger reset`.
pub const DAMAGED_LEDGER_EXIT: u8 = 65;

fn is_damaged_ledger(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<crate::ledger::LedgerError>(),
            Some(crate::ledger::LedgerError::Damaged { .. })
        )
    })
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("s3drop: error: {error:#}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
