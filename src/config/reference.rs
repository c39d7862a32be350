//! The one description of every config key: `s3drop run --help` is generated from it, and
//! tests hold README's table and `examples/s3drop.toml` to it (and it to the config
//! struct), so a key cannot exist in one place and be missing from another.

/// One config key as documented.
pub struct KeyDoc {
    pub name: &'static str,
    /// The default as README shows it (Markdown), or "required" / "none".
    pub default: &'static str,
    /// What it means (Markdown: backticks for code).
    pub meaning: &'static str,
}

pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        name: "watch_dir",
        default: "required",
        meaning: "directory to watch, recursively (absolute path)",
    },
    KeyDoc {
        name: "bucket",
        default: "required",
        meaning: "destination bucket",
    },
    KeyDoc {
        name: "role_arn",
        default: "required with `assume_role`",
        meaning: "upload role to assume; not used with `session_type = \"federation_token\"`",
    },
    KeyDoc {
        name: "credential_source",
        default: "`\"Ec2InstanceMetadata\"`",
        meaning: "where the base credentials come from (AWS's shared-config values): \
                  `\"Ec2InstanceMetadata\"`, the instance role from IMDSv2, access keys in \
                  the environment ignored; or `\"Environment\"`, `AWS_ACCESS_KEY_ID`, \
                  `AWS_SECRET_ACCESS_KEY` and optional `AWS_SESSION_TOKEN` of s3drop's own \
                  environment. Not together with `source_profile`",
    },
    KeyDoc {
        name: "source_profile",
        default: "none",
        meaning: "base credentials from this profile of the shared config files (as `aws \
                  configure --profile NAME` writes them; `AWS_CONFIG_FILE` and \
                  `AWS_SHARED_CREDENTIALS_FILE` honoured). Not together with \
                  `credential_source`",
    },
    KeyDoc {
        name: "session_type",
        default: "`\"assume_role\"`",
        meaning: "how the scoped session is minted: `\"assume_role\"` (`sts:AssumeRole` into \
                  `role_arn`) or `\"federation_token\"` (`sts:GetFederationToken` for an IAM \
                  user's long-term keys from `credential_source = \"Environment\"` or \
                  `source_profile`; the instance role cannot call it). Both send the session \
                  policy",
    },
    KeyDoc {
        name: "state_dir",
        default: "`/var/lib/s3drop`",
        meaning: "where the ledger lives; not inside `watch_dir`",
    },
    KeyDoc {
        name: "key_prefix",
        default: "`\"{instance_id}/\"`",
        meaning: "key prefix; `{instance_id}` (from IMDS), `{region}` and `{hostname}` are \
                  filled in (off EC2 use `{hostname}`). Must not be empty or contain `*`, `?`, \
                  `$` (IAM would read them as wildcards or variables)",
    },
    KeyDoc {
        name: "key_template",
        default: "`\"{path}\"`",
        meaning: "what follows `key_prefix` in each key: `{path}` (the path under `watch_dir`), \
                  `{name}`, `{stem}`, `{ext}`, the file's modification time in UTC `{yyyy}`, \
                  `{mm}`, `{dd}`, `{hh}`, and `key_prefix`'s placeholders; e.g. \
                  `\"{yyyy}/{mm}/{dd}/{path}\"`. Must name the file (`{path}`, `{name}` or \
                  `{stem}`), and make no `.`, `..` or empty segment (checked as written and \
                  per file: `{ext}` is empty for a name without one). A file's key is decided \
                  once and kept for its retries; two files of one run that map to one key: \
                  the second is refused, never overwrites",
    },
    KeyDoc {
        name: "region",
        default: "`AWS_REGION`, else IMDS",
        meaning: "region of the bucket and STS",
    },
    KeyDoc {
        name: "external_id",
        default: "none",
        meaning: "passed to AssumeRole when the upload role's trust policy requires one \
                  (`assume_role` only)",
    },
    KeyDoc {
        name: "session_duration_seconds",
        default: "`3600`",
        meaning: "900–3600 with `assume_role` (STS caps role-chained sessions at one hour); \
                  900–129600 (36 h) with `federation_token`",
    },
    KeyDoc {
        name: "startup_jitter_seconds",
        default: "`0`",
        meaning: "for fleets: the first session is asked of STS after a random delay up to \
                  this long (0–3600), so instances started together do not call STS \
                  together; files are watched and queued meanwhile",
    },
    KeyDoc {
        name: "after_upload",
        default: "`\"keep\"`",
        meaning: "`\"keep\"`, `\"delete\"` or `\"move\"`; delete and move act only after S3 \
                  confirmed that very version",
    },
    KeyDoc {
        name: "move_to",
        default: "none",
        meaning: "with `\"move\"`: directory on watch_dir's filesystem, outside it",
    },
    KeyDoc {
        name: "exclude",
        default: "`[\".*\", \"*.tmp\", \"*.part\", \"*.swp\", \"*~\", \"*.crdownload\", \
                  \"*.download\", \"#*#\", \"4913\", \"*-journal\", \"*-wal\", \"*-shm\"]`",
        meaning: "globs; a pattern without `/` matches any path component (so `.*` also skips \
                  dot-directories), one with `/` the whole relative path. The defaults are \
                  names that are never finished files: hidden and temporary files, partial \
                  downloads, editor backups, SQLite's journal files (see \"What gets \
                  uploaded\"). Setting it replaces the defaults",
    },
    KeyDoc {
        name: "concurrency",
        default: "`16`",
        meaning: "files uploaded at once",
    },
    KeyDoc {
        name: "settle_seconds",
        default: "`2`",
        meaning: "how long a file found by a scan must be unmodified",
    },
    KeyDoc {
        name: "quiet_period_ms",
        default: "`100`",
        meaning: "how long a file closed (or renamed in) must stay untouched before it is \
                  taken: deleted, renamed or written meanwhile, it was not finished (SQLite's \
                  journal); touched (rsync, tar and curl -R set the mtime after the close), \
                  the wait restarts, so the file is sent once. 0 to 60000",
    },
    KeyDoc {
        name: "shutdown_timeout_seconds",
        default: "`30`",
        meaning: "grace for uploads in flight at stop",
    },
    KeyDoc {
        name: "rescan_interval_seconds",
        default: "`300`",
        meaning: "safety rescan period (10–86400)",
    },
    KeyDoc {
        name: "multipart_threshold",
        default: "`\"16MiB\"`",
        meaning: "files larger than this go up in parts (5MiB–5GiB)",
    },
    KeyDoc {
        name: "part_size",
        default: "`\"8MiB\"`",
        meaning: "part size (5MiB–5GiB), raised to stay within 10,000 parts",
    },
    KeyDoc {
        name: "part_concurrency",
        default: "`4`",
        meaning: "parts of one file sent at once",
    },
    KeyDoc {
        name: "max_bandwidth",
        default: "none",
        meaning: "e.g. `\"50MiB\"`: bytes per second over all uploads",
    },
    KeyDoc {
        name: "max_file_size",
        default: "none",
        meaning: "e.g. `\"20GiB\"`: a larger file is not uploaded (kept, logged as an error, \
                  listed by `s3drop status`); a file that shrinks below it is taken at the \
                  next retry or SIGHUP. Bounds what one producer (a sparse file of zeros) can \
                  send",
    },
    KeyDoc {
        name: "storage_class",
        default: "none (S3's `STANDARD`)",
        meaning: "S3 storage class of every object, e.g. `\"STANDARD_IA\"`, \
                  `\"INTELLIGENT_TIERING\"`, `\"GLACIER_IR\"`, `\"DEEP_ARCHIVE\"` (S3's \
                  names; others are refused with the list)",
    },
    KeyDoc {
        name: "sse",
        default: "none (the bucket's default)",
        meaning: "server-side encryption: `\"AES256\"`, `\"aws:kms\"` or `\"aws:kms:dsse\"`",
    },
    KeyDoc {
        name: "sse_kms_key_id",
        default: "none",
        meaning: "with the KMS kinds, required: the key's ARN; the session policy then allows \
                  `kms:GenerateDataKey` and `kms:Decrypt` on exactly that key",
    },
    KeyDoc {
        name: "bucket_key",
        default: "none (the bucket's setting)",
        meaning: "with the KMS kinds: `true` to use an S3 Bucket Key (fewer KMS calls)",
    },
    KeyDoc {
        name: "acl",
        default: "none",
        meaning: "a canned ACL, e.g. `\"bucket-owner-full-control\"`; adds \
                  `s3:PutObjectAcl` to the session policy. Buckets with ACLs disabled \
                  (Object Ownership \"bucket owner enforced\", the default since 2023) refuse \
                  any other",
    },
    KeyDoc {
        name: "tags",
        default: "none",
        meaning: "e.g. `{ team = \"data\", host = \"{hostname}\" }`: object tags (at most \
                  10; keys up to 128, values up to 256 characters; values may use \
                  `key_prefix`'s placeholders); adds `s3:PutObjectTagging` to the session \
                  policy",
    },
    KeyDoc {
        name: "metadata",
        default: "none",
        meaning: "e.g. `{ source = \"{instance_id}\" }`: user metadata (`x-amz-meta-*`; \
                  ASCII keys and values, 2 KB in all; values may use the placeholders)",
    },
    KeyDoc {
        name: "content_type",
        default: "`\"auto\"`",
        meaning: "`\"auto\"`: from the file name's extension, `application/octet-stream` \
                  when unknown; or a fixed media type",
    },
    KeyDoc {
        name: "overwrite",
        default: "`true`",
        meaning: "`false`: never replace an existing object. Every PutObject and \
                  CompleteMultipartUpload carries `If-None-Match: *`; a file whose key \
                  exists is not uploaded, not deleted or moved, recorded as a conflict and \
                  logged once, and tried again only at SIGHUP or when it changes (a big \
                  file's parts are sent before S3 can say so, then discarded)",
    },
    KeyDoc {
        name: "metrics_listen",
        default: "none (no listener)",
        meaning: "e.g. `\"127.0.0.1:9464\"`: serve `GET /metrics` (Prometheus text) and `GET \
                  /health` (200, or 503 with the reason) there. Loopback only unless \
                  `metrics_listen_public`",
    },
    KeyDoc {
        name: "metrics_listen_public",
        default: "`false`",
        meaning: "`true` allows a non-loopback `metrics_listen` (the metrics tell bucket, \
                  prefix and counts)",
    },
    KeyDoc {
        name: "metrics_textfile",
        default: "none",
        meaning: "e.g. `\"/var/lib/prometheus/node-exporter/s3drop.prom\"`: the same \
                  metrics written there every 15 s and at stop, atomically, for \
                  node_exporter's textfile collector",
    },
    KeyDoc {
        name: "broker",
        default: "`false`",
        meaning: "`true`: the running daemon hands sessions to `s3drop credentials` and \
                  `s3drop exec` on `broker_socket` (its own for the whole prefix, or one it \
                  mints once per `--prefix`/`--key` and caches), so other programs cost no \
                  STS call each. Whoever may open the socket (group `s3drop`: those who may \
                  drop files) may write under the prefix",
    },
    KeyDoc {
        name: "broker_socket",
        default: "`/run/s3drop/broker.sock`",
        meaning: "the broker's Unix socket (mode 0660, the daemon's group); its directory \
                  must not be writable by others",
    },
    KeyDoc {
        name: "force_path_style",
        default: "`false`",
        meaning: "path-style URLs, for S3-compatible servers behind a host name",
    },
];

/// README's configuration table.
pub fn markdown_table() -> String {
    let mut table = String::from("| key | default | meaning |\n|---|---|---|\n");
    for key in KEYS {
        table.push_str(&format!(
            "| `{}` | {} | {} |\n",
            key.name, key.default, key.meaning
        ));
    }
    table
}

/// The key list of `s3drop run --help`: plain text, wrapped.
pub fn help_text() -> String {
    const NAME_WIDTH: usize = 26;
    const WIDTH: usize = 90;
    let mut out = String::from("Config keys (TOML; unknown keys are rejected):\n");
    for key in KEYS {
        let default = match key.default {
            "required" => "required; ".to_string(),
            "none" => String::new(),
            d => format!("[default: {}] ", d.replace('`', "")),
        };
        let text = format!("{default}{}", key.meaning.replace('`', ""));
        let mut line = format!("  {:<NAME_WIDTH$}", key.name);
        for word in text.split_whitespace() {
            if line.len() + 1 + word.len() > WIDTH && line.trim().len() > key.name.len() {
                out.push_str(line.trim_end());
                out.push('\n');
                line = " ".repeat(NAME_WIDTH + 2);
            } else if !line.ends_with(' ') {
                line.push(' ');
            }
            line.push_str(word);
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The field names of the config struct, as serde sees them.
    fn struct_fields() -> BTreeSet<&'static str> {
        super::super::raw_field_names().iter().copied().collect()
    }

    fn documented() -> BTreeSet<&'static str> {
        KEYS.iter().map(|k| k.name).collect()
    }

    fn repo_file(path: &str) -> String {
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
            .unwrap()
    }

    #[test]
    fn every_config_field_is_documented_once_and_nothing_else_is() {
        assert_eq!(struct_fields(), documented());
        assert_eq!(KEYS.len(), documented().len(), "a key documented twice");
    }

    #[test]
    fn readme_has_the_generated_table() {
        let readme = repo_file("README.md");
        let table = markdown_table();
        assert!(
            readme.contains(&table),
            "README.md's configuration table differs from config::reference; replace it \
             with:\n{table}"
        );
    }

    #[test]
    fn the_example_mentions_every_key() {
        let example = repo_file("examples/s3drop.toml");
        for key in KEYS {
            let mentioned = example.lines().any(|line| {
                line.trim_start_matches(['#', ' '])
                    .starts_with(&format!("{} ", key.name))
            });
            assert!(mentioned, "examples/s3drop.toml lacks `{}`", key.name);
        }
    }

    #[test]
    fn the_documented_excludes_are_the_defaults() {
        let doc = KEYS.iter().find(|k| k.name == "exclude").unwrap().default;
        let listed = format!("`{:?}`", super::super::DEFAULT_EXCLUDE);
        assert_eq!(doc.replace(' ', ""), listed.replace(' ', ""));
    }

    #[test]
    fn help_lists_every_key_within_the_width() {
        let help = help_text();
        for key in KEYS {
            assert!(help.contains(&format!("  {} ", key.name)), "{}", key.name);
        }
        assert!(help.lines().all(|l| l.len() <= 90), "{help}");
    }
}
