//! Properties of everything that reads untrusted input, over generated cases (proptest,
//! shrinking to a minimal counterexample): the config, the path → key mapping, templates,
//! the session-policy builder and the ledger's record decoder. They run in the ordinary
//! suite on stable Rust; `PROPTEST_CASES=N` runs more of each.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use crate::auth::policy::{Grants, MAX_SESSION_POLICY_CHARS, Writable, session_policy};
use crate::config::{Config, KeyPrefixTemplate, PrefixFacts};
use crate::keys::{KeyRule, decode_component, encode_path};
use crate::ledger::record::{FileRecord, FileState, PartRecord, decode, encode};

/// A file name: any bytes but `/` and NUL, not `.` or `..`.
fn name() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
        1..24,
    )
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

/// Names weighted towards what breaks mappings: controls, the quote, control pictures,
/// invalid UTF-8.
fn tricky_name() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"\n".to_vec()),
        Just(b"\x7f".to_vec()),
        Just("\u{201B}".as_bytes().to_vec()),
        Just("\u{240A}".as_bytes().to_vec()),
        Just("\u{2421}".as_bytes().to_vec()),
        Just(b"\xff".to_vec()),
        Just(b"\xe6\x97".to_vec()),
        Just(b"FF".to_vec()),
        Just("ü".as_bytes().to_vec()),
        Just(b"a".to_vec()),
    ];
    proptest::collection::vec(piece, 1..8).prop_map(|p| p.concat())
}

fn relative(names: &[Vec<u8>]) -> PathBuf {
    names.iter().map(|n| OsStr::from_bytes(n)).collect()
}

proptest! {
    /// Every relative path has a key, and the key gives the path back: no two files share a
    /// key, whatever bytes their names hold.
    #[test]
    fn the_path_to_key_mapping_is_reversible(
        names in proptest::collection::vec(prop_oneof![name(), tricky_name()], 1..5)
    ) {
        let key = encode_path(&relative(&names)).unwrap();
        let back: Vec<Vec<u8>> = key.split('/').map(|c| decode_component(c).unwrap()).collect();
        prop_assert_eq!(back, names);
        prop_assert!(!key.chars().any(|c| c.is_control()), "{:?}", key);
    }

    /// Two different names never map to one key.
    #[test]
    fn two_names_never_share_a_key(a in tricky_name(), b in tricky_name()) {
        prop_assume!(a != b);
        prop_assert_ne!(
            encode_path(Path::new(OsStr::from_bytes(&a))).unwrap(),
            encode_path(Path::new(OsStr::from_bytes(&b))).unwrap()
        );
    }

    /// Any text as a config: an error or a config, never a panic; an error is one line.
    #[test]
    fn any_config_text_is_parsed_or_refused(text in "\\PC{0,400}") {
        if let Err(e) = Config::parse(&text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    /// Config files that are valid TOML with arbitrary values for the real keys.
    #[test]
    fn any_values_for_the_real_keys_are_parsed_or_refused(
        prefix in "\\PC{0,40}",
        template in "\\PC{0,40}",
        tag in "\\PC{0,40}",
        number in any::<i64>(),
        size in "\\PC{0,12}",
    ) {
        let toml = format!(
            "watch_dir = \"/w\"\nstate_dir = \"/s\"\nbucket = \"b-1\"\n\
             role_arn = \"arn:aws:iam::123456789012:role/u\"\n\
             key_prefix = {prefix:?}\nkey_template = {template:?}\n\
             tags = {{ t = {tag:?} }}\nconcurrency = {number}\npart_size = {size:?}\n"
        );
        let _ = Config::parse(&toml);
    }

    /// An expanded key_prefix never holds what IAM reads as a wildcard or variable, nor a
    /// `.`/`..` segment, whatever the host's facts are.
    #[test]
    fn an_expanded_prefix_never_widens_the_policy(
        template in "[a-z{}_/*?$.]{0,30}",
        instance in "\\PC{0,20}",
        host in "\\PC{0,20}",
    ) {
        let Ok(parsed) = KeyPrefixTemplate::parse(&template) else { return Ok(()) };
        let facts = PrefixFacts { instance_id: Some(&instance), region: "eu-west-1", hostname: &host };
        if let Ok(prefix) = parsed.expand(&facts) {
            prop_assert!(!prefix.contains(['*', '?', '$']), "{:?}", prefix);
            prop_assert!(!prefix.split('/').any(|s| s == "." || s == ".."), "{:?}", prefix);
            prop_assert!(!prefix.starts_with('/') && !prefix.is_empty());
        }
    }

    /// A key from any template and any path stays under the prefix, within S3's limit.
    #[test]
    fn keys_stay_under_the_prefix(
        template in "(\\{path\\}|\\{name\\}|\\{stem\\}|\\{ext\\}|\\{yyyy\\}|[a-z/._-]){0,8}",
        names in proptest::collection::vec(prop_oneof![name(), tricky_name()], 1..4),
        mtime in any::<i64>(),
    ) {
        let config = format!(
            "watch_dir = \"/w\"\nstate_dir = \"/s\"\nbucket = \"b-1\"\n\
             role_arn = \"arn:aws:iam::123456789012:role/u\"\nkey_template = {template:?}\n"
        );
        let Ok(config) = Config::parse(&config) else { return Ok(()) };
        let facts = PrefixFacts { instance_id: Some("i-1"), region: "eu-west-1", hostname: "h" };
        let rule = KeyRule::new("p/".into(), config.key_template.with_facts(&facts).unwrap());
        if let Ok(key) = rule.key(&relative(&names), i128::from(mtime)) {
            prop_assert!(key.starts_with("p/"), "{:?}", key);
            prop_assert!(key.len() <= 1024);
            prop_assert!(!key["p/".len()..].split('/').any(|s| s.is_empty() || s == "." || s == ".."), "{:?}", key);
        }
    }

    /// The session policy is JSON within STS's limit (or refused as too long), and its one
    /// writable resource is the prefix exactly: every IAM wildcard in it escaped, the only
    /// wildcard the trailing one.
    #[test]
    fn the_session_policy_names_the_prefix_and_nothing_wider(
        prefix in "\\PC{1,60}",
        key in proptest::option::of("\\PC{1,60}"),
        tagging in any::<bool>(),
        acl in any::<bool>(),
    ) {
        let writable = match &key {
            Some(k) => Writable::Key(k),
            None => Writable::Under(&prefix),
        };
        let grants = Grants { tagging, acl, kms_key: None };
        let Ok(policy) = session_policy("aws", "b-1", writable, &grants, false) else {
            return Ok(());
        };
        prop_assert!(policy.len() <= MAX_SESSION_POLICY_CHARS);
        let doc: serde_json::Value = serde_json::from_str(&policy).unwrap();
        let statements = doc["Statement"].as_array().unwrap();
        prop_assert_eq!(statements.len(), 1);
        let resource = statements[0]["Resource"].as_str().unwrap();
        let object = resource.strip_prefix("arn:aws:s3:::b-1/").unwrap();
        let (literal, wildcard) = match object.strip_suffix('*') {
            Some(l) if key.is_none() => (l, true),
            _ => (object, false),
        };
        prop_assert_eq!(wildcard, key.is_none());
        let unescaped = literal.replace("${*}", "*").replace("${?}", "?").replace("${$}", "$");
        prop_assert_eq!(&unescaped, key.as_ref().unwrap_or(&prefix));
        // No unescaped wildcard or variable left in the literal part.
        let bare = literal.replace("${*}", "").replace("${?}", "").replace("${$}", "");
        prop_assert!(!bare.contains(['*', '?', '$']), "{:?}", literal);
        for action in statements[0]["Action"].as_array().unwrap() {
            let action = action.as_str().unwrap();
            prop_assert!(action.starts_with("s3:Put") || action == "s3:AbortMultipartUpload", "{}", action);
        }
    }

    /// The ledger's decoder takes any bytes: a record, or an error, never a panic; a
    /// record cut short or with a byte changed is never read as another valid record of
    /// the same shape silently (it is an error or decodes to something).
    #[test]
    fn the_record_decoder_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        cut in any::<proptest::sample::Index>(),
        flip in any::<proptest::sample::Index>(),
        with in any::<u8>(),
    ) {
        let _ = decode(&bytes);
        let record = FileRecord::new(
            crate::file::FileIdentity { dev: 1, inode: 2, size: 3, mtime_ns: 4 },
            FileState::Uploading {
                key: "p/a".into(),
                upload_id: "u".into(),
                part_size: 8,
                parts: vec![PartRecord { number: 1, etag: "e".into(), crc32c: None }],
            },
        );
        let good = encode(&record);
        prop_assert_eq!(decode(&good).unwrap(), record);
        let cut = cut.index(good.len());
        prop_assert!(decode(&good[..cut]).is_err(), "a record cut at {} was read", cut);
        let mut changed = good.clone();
        changed[flip.index(good.len())] = with;
        let _ = decode(&changed);
    }
}
