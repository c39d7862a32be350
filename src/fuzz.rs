//! What the fuzz targets (`fuzz/`, `scripts/fuzz.sh`) check on arbitrary bytes: each
//! function takes the fuzzer's input, feeds it to code that reads untrusted input, and
//! panics if a promise breaks (a panic inside is a finding too). The same promises are
//! proptest properties in the ordinary suite (`src/properties.rs`), which also runs these
//! functions on random bytes, so stable CI keeps them compiling and true.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::auth::policy::{Grants, MAX_SESSION_POLICY_CHARS, Writable, session_policy};
use crate::config::{Config, KeyPrefixTemplate, PrefixFacts, Template};
use crate::keys::{KeyRule, decode_component, encode_path};
use crate::ledger::record::{FileRecord, FileState, PartRecord, decode, encode};

/// Splits `data` at the first `sep` (the rest is empty if there is none).
fn split(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// The names of a relative path made of `data` (split at `/`; NUL, empty names and
/// `.`/`..` left out, as no file system has them).
fn names(data: &[u8]) -> Vec<Vec<u8>> {
    data.split(|b| *b == b'/')
        .map(|n| n.iter().copied().filter(|b| *b != 0).collect::<Vec<u8>>())
        .filter(|n| !n.is_empty() && n != b"." && n != b"..")
        .collect()
}

fn relative(names: &[Vec<u8>]) -> PathBuf {
    names.iter().map(|n| OsStr::from_bytes(n)).collect()
}

/// Any text as a config file: a config or an error with a message, never a panic.
pub fn config(data: &[u8]) {
    if let Err(e) = Config::parse(&text(data)) {
        assert!(!e.to_string().is_empty());
    }
}

/// Any path: its key decodes back to the path, holds no control character, and a second
/// path (after a NUL in `data`) has another key unless it is the same path.
pub fn path_to_key(data: &[u8]) {
    let (a, b) = split(data, 0);
    let (a, b) = (names(a), names(b));
    if a.is_empty() {
        return;
    }
    let key = encode_path(&relative(&a)).expect("every path has a key");
    let back: Vec<Vec<u8>> = key
        .split('/')
        .map(|c| decode_component(c).expect("a key's component decodes"))
        .collect();
    assert_eq!(back, a, "{key:?} does not give its path back");
    assert!(!key.chars().any(char::is_control), "{key:?}");
    if !b.is_empty() && a != b {
        assert_ne!(
            key,
            encode_path(&relative(&b)).unwrap(),
            "two paths share a key"
        );
    }
}

/// Templates (key_prefix, key_template, tag and metadata values) with any text and any
/// host facts: an expanded prefix never holds an IAM wildcard or variable, a `.`/`..`
/// segment or a leading `/`; a key stays under the prefix, within S3's 1,024 bytes, with
/// no empty, `.` or `..` segment; a tag value expands without panicking.
pub fn templates(data: &[u8]) {
    let (template, rest) = split(data, 0);
    let (instance, rest) = split(rest, 0);
    let (host, path) = split(rest, 0);
    let (template, instance, host) = (text(template), text(instance), text(host));
    let facts = PrefixFacts {
        instance_id: Some(&instance),
        region: "eu-west-1",
        hostname: &host,
    };
    if let Ok(parsed) = KeyPrefixTemplate::parse(&template)
        && let Ok(prefix) = parsed.expand(&facts)
    {
        assert!(!prefix.contains(['*', '?', '$']), "{prefix:?}");
        assert!(
            !prefix.split('/').any(|s| s == "." || s == ".."),
            "{prefix:?}"
        );
        assert!(!prefix.starts_with('/') && !prefix.is_empty(), "{prefix:?}");
    }
    if let Ok(tag) = Template::parse("tags", &template) {
        let _ = tag.expand(&facts);
    }
    let config = format!(
        "watch_dir = \"/w\"\nstate_dir = \"/s\"\nbucket = \"b-1\"\n\
         role_arn = \"arn:aws:iam::123456789012:role/u\"\nkey_template = {template:?}\n"
    );
    let names = names(path);
    if names.is_empty() {
        return;
    }
    let Ok(config) = Config::parse(&config) else {
        return;
    };
    let Ok(rule) = config.key_template.with_facts(&facts) else {
        return;
    };
    let mtime = i128::from(i64::from_le_bytes(
        path.iter()
            .copied()
            .chain([0; 8])
            .take(8)
            .collect::<Vec<u8>>()[..8]
            .try_into()
            .unwrap(),
    ));
    if let Ok(key) = KeyRule::new("p/".into(), rule).key(&relative(&names), mtime) {
        assert!(key.starts_with("p/"), "{key:?}");
        assert!(key.len() <= 1024, "{} bytes", key.len());
        assert!(
            !key["p/".len()..]
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == ".."),
            "{key:?}"
        );
    }
}

/// The session policy for any prefix or key: JSON within STS's limit (or refused as too
/// long), one statement whose one resource is the prefix (or key) exactly, every IAM
/// wildcard in it escaped, the only wildcard the trailing one of a prefix; only Put
/// actions and AbortMultipartUpload.
pub fn policy(data: &[u8]) {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let scope = text(data);
    if scope.is_empty() {
        return;
    }
    let is_key = flags & 1 != 0;
    let writable = if is_key {
        Writable::Key(&scope)
    } else {
        Writable::Under(&scope)
    };
    let grants = Grants {
        tagging: flags & 2 != 0,
        acl: flags & 4 != 0,
        kms_key: None,
    };
    let Ok(policy) = session_policy("aws", "b-1", writable, &grants, false) else {
        return;
    };
    assert!(policy.len() <= MAX_SESSION_POLICY_CHARS);
    let doc: serde_json::Value = serde_json::from_str(&policy).expect("the policy is JSON");
    let statements = doc["Statement"].as_array().unwrap();
    assert_eq!(statements.len(), 1);
    let resource = statements[0]["Resource"].as_str().unwrap();
    let object = resource.strip_prefix("arn:aws:s3:::b-1/").unwrap();
    let (literal, wildcard) = match object.strip_suffix('*') {
        Some(l) if !is_key => (l, true),
        _ => (object, false),
    };
    assert_eq!(wildcard, !is_key, "{resource}");
    let unescaped = literal
        .replace("${*}", "*")
        .replace("${?}", "?")
        .replace("${$}", "$");
    assert_eq!(unescaped, scope);
    let bare = literal
        .replace("${*}", "")
        .replace("${?}", "")
        .replace("${$}", "");
    assert!(!bare.contains(['*', '?', '$']), "{literal:?}");
    for action in statements[0]["Action"].as_array().unwrap() {
        let action = action.as_str().unwrap();
        assert!(
            action.starts_with("s3:Put") || action == "s3:AbortMultipartUpload",
            "{action}"
        );
    }
}

/// The ledger's record decoder on any bytes: a record or an error, never a panic; a good
/// record cut short anywhere is an error, never read as a record.
pub fn ledger_record(data: &[u8]) {
    let _ = decode(data);
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let record = FileRecord::new(
        crate::file::FileIdentity {
            dev: 1,
            inode: 2,
            size: 3,
            mtime_ns: 4,
        },
        FileState::Uploading {
            key: text(rest),
            upload_id: "u".into(),
            part_size: 8,
            parts: vec![PartRecord {
                number: 1,
                etag: "e".into(),
                crc32c: None,
            }],
        },
    );
    let good = encode(&record);
    assert_eq!(decode(&good).unwrap(), record);
    let cut = usize::from(cut) % good.len();
    assert!(
        decode(&good[..cut]).is_err(),
        "a record cut at {cut} was read"
    );
}

/// A check on the fuzzer's bytes.
pub type Target = fn(&[u8]);

/// The targets by name (each is a binary of the same name in `fuzz/`).
pub const TARGETS: [(&str, Target); 5] = [
    ("config", config),
    ("path_to_key", path_to_key),
    ("templates", templates),
    ("policy", policy),
    ("ledger_record", ledger_record),
];

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// What `cargo fuzz run templates` found (300 s run): a host name with a `{` filled
    /// into the key template was read as template text again, and the next file's key
    /// panicked. Values are now never re-parsed (`config::template`).
    #[test]
    fn the_templates_crash_the_fuzzer_found_holds() {
        const FOUND: &[u8] = &[
            123, 105, 110, 115, 116, 97, 110, 99, 101, 95, 105, 100, 125, 255, 105, 255, 255, 255,
            255, 163, 163, 163, 163, 163, 163, 163, 110, 92, 118, 91, 250, 123, 115, 116, 101, 109,
            125, 34, 91, 123, 115, 116, 101, 109, 125, 34, 92, 34, 123, 105, 110, 115, 116, 97,
            110, 99, 101, 95, 105, 100, 125, 118, 91, 120, 0, 115, 124, 115, 116, 101, 109, 125,
            116, 34, 92, 118, 75, 123, 121, 121, 59, 121, 134, 146, 34, 34, 92, 34, 0, 189, 189,
            189, 0, 0, 100, 163, 163, 0, 0, 36, 33, 163, 110, 92, 118, 91, 123, 115, 116, 229, 109,
            125, 34, 91, 123, 115, 116, 101, 109, 125, 34, 92, 34, 92, 118, 91, 123, 115, 116, 163,
            101, 125, 109, 163, 163, 163, 163, 163, 86, 255, 163, 163, 163, 163, 163, 163, 163,
            163, 163,
        ];
        super::templates(FOUND);
    }

    proptest! {
        /// Every fuzz target holds on random bytes (the fuzzer searches far more; this
        /// keeps the targets true on stable CI).
        #[test]
        fn every_fuzz_target_holds_on_random_bytes(
            data in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            for (_, target) in super::TARGETS {
                target(&data);
            }
        }
    }
}
