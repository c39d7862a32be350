//! The command line: raw flags here, everything else validated by [`Config`].

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
role with an inline session policy that allows s3:PutObject under one key prefix and
nothing else, watches a drop directory, and uploads each file once it is complete (closed
after writing, or renamed into place) to s3://BUCKET/PREFIX/<path relative to watch_dir>.
S3 verifies each upload against a CRC32C checksum; uploads are recorded in state_dir so a
restart does not send them again.

The SDK's own variables apply: AWS_REGION, AWS_ENDPOINT_URL,
AWS_EC2_METADATA_SERVICE_ENDPOINT. Access keys in the environment are ignored: credentials
come only from IMDS. RUST_LOG sets the log filter (default: s3drop=info,warn).";

const AFTER_HELP: &str = "\
Minimal config (/etc/s3drop/s3drop.toml):
    watch_dir = \"/var/spool/s3drop\"
    bucket    = \"my-drop-bucket\"
    role_arn  = \"arn:aws:iam::123456789012:role/s3drop-upload\"

Then:  s3drop check    # prove the chain, first broken link named
       s3drop run      # the daemon (systemd runs this)";

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
}

const RUN_ABOUT: &str = "\
Run the daemon in the foreground until SIGTERM or SIGINT.

At start: validates the config, checks watch_dir, state_dir (and move_to), starts watching
and queues the files already in watch_dir (then it is ready: systemd's READY=1), reads the
instance id and region from IMDS and assumes the upload role with the prefix-scoped session
policy, then uploads the queue and each new file as it completes. While IMDS or STS cannot
be reached it keeps retrying (files stay queued; the status line says why); a refusal exits
non-zero with the cause. On SIGTERM it stops taking new files, lets uploads in flight
finish within shutdown_timeout_seconds, and exits 0. SIGHUP rescans watch_dir and retries
failed files now (it does not reload the config). A fatal error (a task that dies, a ledger
that can no longer be written) stops it the same way and exits non-zero with the cause.";

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
        Command::Check(_) | Command::Validate(_) => logging::QUIET_FILTER,
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

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
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
