//! The inline session policy sent with `sts:AssumeRole`. The effective permissions of the
//! session are the intersection of the upload role's policies and this document, so even
//! a broadly-permitted upload role yields credentials that can write only under one prefix.

use serde_json::json;

use crate::config::{ObjectOptions, Sse};

/// STS refuses inline session policies longer than this (after packing).
pub const MAX_SESSION_POLICY_CHARS: usize = 2048;

#[derive(Debug, thiserror::Error)]
#[error(
    "the session policy is {len} characters long; STS accepts at most {MAX_SESSION_POLICY_CHARS}"
)]
pub struct PolicyTooLong {
    pub len: usize,
}

/// What a session may write: every key under a prefix, or exactly one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writable<'a> {
    Under(&'a str),
    Key(&'a str),
}

/// The one resource the session may write: `arn:<partition>:s3:::<bucket>/<prefix>*` or
/// `…/<key>`. Characters IAM reads as wildcards or variables in a resource (`*`, `?`, `$`)
/// are escaped (`${*}`, `${?}`, `${$}`), so a key named `a*` grants that key only.
pub fn object_arn(partition: &str, bucket: &str, writable: Writable<'_>) -> String {
    match writable {
        Writable::Under(prefix) => format!("arn:{partition}:s3:::{bucket}/{}*", escape(prefix)),
        Writable::Key(key) => format!("arn:{partition}:s3:::{bucket}/{}", escape(key)),
    }
}

/// IAM's escapes for the characters that are special in a resource.
fn escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        match c {
            '*' => out.push_str("${*}"),
            '?' => out.push_str("${?}"),
            '$' => out.push_str("${$}"),
            c => out.push(c),
        }
    }
    out
}

/// The actions the session needs. Multipart uploads are authorized as `s3:PutObject` by
/// S3 (create, upload part, complete); abandoning one whose file changed needs
/// `s3:AbortMultipartUpload`.
pub const ACTIONS: [&str; 2] = ["s3:PutObject", "s3:AbortMultipartUpload"];

/// Action names that only a local emulator wants: fakecloud 0.51 authorizes multipart
/// operations under their own names instead of `s3:PutObject`. Never used against AWS;
/// enabled only by the test-only variable [`EMULATOR_MULTIPART_ACTIONS_VAR`].
pub const EMULATOR_MULTIPART_ACTIONS: [&str; 3] = [
    "s3:CreateMultipartUpload",
    "s3:UploadPart",
    "s3:CompleteMultipartUpload",
];
pub const EMULATOR_MULTIPART_ACTIONS_VAR: &str = "S3DROP_TEST_EMULATOR_MULTIPART_ACTIONS";

/// What the configured object options add to the policy, each only when its option is
/// set: S3 authorizes a PutObject's tagging header as `s3:PutObjectTagging` and its ACL
/// header as `s3:PutObjectAcl`; SSE-KMS needs `kms:GenerateDataKey` on the key, and
/// `kms:Decrypt` for multipart uploads (S3 decrypts the data key for each part).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub tagging: bool,
    pub acl: bool,
    pub kms_key: Option<String>,
}

impl Grants {
    pub fn of(options: &ObjectOptions) -> Grants {
        Grants {
            tagging: !options.tags.is_empty(),
            acl: options.acl.is_some(),
            kms_key: match &options.sse {
                Some(Sse::Kms { key_arn, .. }) => Some(key_arn.clone()),
                _ => None,
            },
        }
    }

    /// The S3 actions: [`ACTIONS`], then what tags and an ACL need.
    pub fn actions(&self) -> Vec<&'static str> {
        let mut actions = ACTIONS.to_vec();
        if self.tagging {
            actions.push("s3:PutObjectTagging");
        }
        if self.acl {
            actions.push("s3:PutObjectAcl");
        }
        actions
    }
}

/// The KMS actions SSE-KMS needs on the key.
pub const KMS_ACTIONS: [&str; 2] = ["kms:GenerateDataKey", "kms:Decrypt"];

/// Builds the session policy: the actions of [`Grants::actions`] on what is [`Writable`],
/// the KMS actions on the configured key if there is one, and nothing else (no List, no
/// Get/Head, no other bucket).
pub fn session_policy(
    partition: &str,
    bucket: &str,
    writable: Writable<'_>,
    grants: &Grants,
    emulator_actions: bool,
) -> Result<String, PolicyTooLong> {
    let mut actions = grants.actions();
    if emulator_actions {
        actions.extend(EMULATOR_MULTIPART_ACTIONS);
    }
    let mut statements = vec![json!({
        "Sid": "S3dropPutUnderPrefix",
        "Effect": "Allow",
        "Action": actions,
        "Resource": object_arn(partition, bucket, writable),
    })];
    if let Some(key) = &grants.kms_key {
        statements.push(json!({
            "Sid": "S3dropEncryptWithTheKey",
            "Effect": "Allow",
            "Action": KMS_ACTIONS,
            "Resource": key,
        }));
    }
    let document = json!({
        "Version": "2012-10-17",
        "Statement": statements,
    });
    let packed = document.to_string();
    if packed.len() > MAX_SESSION_POLICY_CHARS {
        return Err(PolicyTooLong { len: packed.len() });
    }
    Ok(packed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The policy for AWS without object options.
    fn plain(bucket: &str, writable: Writable<'_>) -> String {
        session_policy("aws", bucket, writable, &Grants::default(), false).unwrap()
    }

    #[test]
    fn policy_allows_only_writing_under_the_prefix() {
        let text = plain("drop-bucket", Writable::Under("i-0abc/"));
        let doc: Value = serde_json::from_str(&text).unwrap();
        let statements = doc["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 1);
        let s = &statements[0];
        assert_eq!(s["Effect"], "Allow");
        assert_eq!(
            s["Action"],
            json!(["s3:PutObject", "s3:AbortMultipartUpload"])
        );
        assert_eq!(s["Resource"], "arn:aws:s3:::drop-bucket/i-0abc/*");
        assert!(!text.contains(' '), "packed: {text}");
    }

    #[test]
    fn partition_follows_the_role() {
        let text = session_policy(
            "aws-cn",
            "b",
            Writable::Under("p/"),
            &Grants::default(),
            false,
        )
        .unwrap();
        assert!(text.contains("arn:aws-cn:s3:::b/p/*"));
    }

    #[test]
    fn emulator_names_are_added_only_when_asked() {
        let text =
            session_policy("aws", "b", Writable::Under("p/"), &Grants::default(), true).unwrap();
        assert!(text.contains("s3:UploadPart"));
        assert!(!plain("b", Writable::Under("p/")).contains("UploadPart"));
    }

    #[test]
    fn overlong_policy_is_refused() {
        let prefix = "p".repeat(2100);
        let err = session_policy(
            "aws",
            "b",
            Writable::Under(&prefix),
            &Grants::default(),
            false,
        )
        .unwrap_err();
        assert!(err.len > MAX_SESSION_POLICY_CHARS);
    }

    #[test]
    fn one_key_is_granted_exactly_with_wildcards_escaped() {
        let text = plain("b", Writable::Key("p/a/b.txt"));
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["Statement"][0]["Resource"], "arn:aws:s3:::b/p/a/b.txt");
        assert_eq!(
            object_arn("aws", "b", Writable::Key("p/a*?$x")),
            "arn:aws:s3:::b/p/a${*}${?}${$}x"
        );
        assert_eq!(
            object_arn("aws", "b", Writable::Under("p/we*rd/")),
            "arn:aws:s3:::b/p/we${*}rd/*",
            "only the trailing wildcard is one"
        );
    }

    fn statements(text: &str) -> Vec<Value> {
        let doc: Value = serde_json::from_str(text).unwrap();
        doc["Statement"].as_array().unwrap().clone()
    }

    #[test]
    fn each_object_option_adds_exactly_its_action_and_nothing_when_off() {
        let under = Writable::Under("p/");
        let policy = |grants: &Grants| session_policy("aws", "b", under, grants, false).unwrap();
        let off = policy(&Grants::default());
        for absent in ["Tagging", "Acl", "kms:"] {
            assert!(!off.contains(absent), "{absent} without its option: {off}");
        }
        let tagging = statements(&policy(&Grants {
            tagging: true,
            ..Grants::default()
        }));
        assert_eq!(
            tagging[0]["Action"],
            json!([
                "s3:PutObject",
                "s3:AbortMultipartUpload",
                "s3:PutObjectTagging"
            ])
        );
        let acl = statements(&policy(&Grants {
            acl: true,
            ..Grants::default()
        }));
        assert_eq!(
            acl[0]["Action"],
            json!(["s3:PutObject", "s3:AbortMultipartUpload", "s3:PutObjectAcl"])
        );
        let key = "arn:aws:kms:eu-west-1:123456789012:key/k-1";
        let kms = statements(&policy(&Grants {
            kms_key: Some(key.into()),
            ..Grants::default()
        }));
        assert_eq!(kms.len(), 2);
        assert_eq!(
            kms[0]["Action"],
            json!(["s3:PutObject", "s3:AbortMultipartUpload"])
        );
        assert_eq!(
            kms[1]["Action"],
            json!(["kms:GenerateDataKey", "kms:Decrypt"])
        );
        assert_eq!(kms[1]["Resource"], key, "exactly the configured key");
    }

    /// The fullest configuration STS can be asked for: the longest prefix the config
    /// allows (512 bytes), the longest bucket name, every option that grows the policy.
    #[test]
    fn the_fullest_policy_fits_sts_limit() {
        let prefix = format!("{}/", "p".repeat(511));
        let grants = Grants {
            tagging: true,
            acl: true,
            kms_key: Some(
                "arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab"
                    .into(),
            ),
        };
        let bucket = "b".repeat(63);
        let text = session_policy(
            "aws-us-gov",
            &bucket,
            Writable::Under(&prefix),
            &grants,
            false,
        )
        .unwrap();
        assert!(text.len() <= MAX_SESSION_POLICY_CHARS, "{}", text.len());
        println!("fullest session policy: {} characters\n{text}", text.len());
    }
}
