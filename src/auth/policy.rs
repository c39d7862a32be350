//! The inline session policy sent with `sts:AssumeRole`. The effective permissions of the
//! session are the intersection of the upload role's policies and this document, so even
//! a broadly-permitted upload role yields credentials that can write only under one prefix.

use serde_json::json;

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

/// Builds the session policy: the [`ACTIONS`] on what is [`Writable`] and nothing else (no
/// List, no Get/Head, no other bucket).
pub fn session_policy(
    partition: &str,
    bucket: &str,
    writable: Writable<'_>,
    emulator_actions: bool,
) -> Result<String, PolicyTooLong> {
    let mut actions: Vec<&str> = ACTIONS.to_vec();
    if emulator_actions {
        actions.extend(EMULATOR_MULTIPART_ACTIONS);
    }
    let document = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "S3dropPutUnderPrefix",
            "Effect": "Allow",
            "Action": actions,
            "Resource": object_arn(partition, bucket, writable),
        }]
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

    #[test]
    fn policy_allows_only_writing_under_the_prefix() {
        let text = session_policy("aws", "drop-bucket", Writable::Under("i-0abc/"), false).unwrap();
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
        let text = session_policy("aws-cn", "b", Writable::Under("p/"), false).unwrap();
        assert!(text.contains("arn:aws-cn:s3:::b/p/*"));
    }

    #[test]
    fn emulator_names_are_added_only_when_asked() {
        let text = session_policy("aws", "b", Writable::Under("p/"), true).unwrap();
        assert!(text.contains("s3:UploadPart"));
        assert!(
            !session_policy("aws", "b", Writable::Under("p/"), false)
                .unwrap()
                .contains("UploadPart")
        );
    }

    #[test]
    fn overlong_policy_is_refused() {
        let prefix = "p".repeat(2100);
        let err = session_policy("aws", "b", Writable::Under(&prefix), false).unwrap_err();
        assert!(err.len > MAX_SESSION_POLICY_CHARS);
    }

    #[test]
    fn one_key_is_granted_exactly_with_wildcards_escaped() {
        let text = session_policy("aws", "b", Writable::Key("p/a/b.txt"), false).unwrap();
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
}
