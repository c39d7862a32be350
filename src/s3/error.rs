//! What can go wrong talking to S3, and the one classifier that says what an answer means.
//! Service errors (S3 answered with an error) are kept apart from transport errors (no
//! usable answer) and local ones (the body could not be read, no credentials to sign with).

use std::io;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// What an S3 error answer means for s3drop, decided from its code and HTTP status alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The session was refused as expired or invalid: get a new one and try again at once.
    ExpiredToken,
    /// The session may not do this (policy, bucket policy, KMS): an operator must act.
    Denied,
    NoSuchBucket,
    /// The multipart upload is gone (aborted, expired, completed).
    NoSuchUpload,
    /// S3 computed another checksum than the one sent: the bytes changed on the way.
    BadChecksum,
    /// Slow down: S3 or the network is overloaded.
    Throttled,
    /// A server-side failure that may pass.
    Transient,
    /// Any other refusal of the request itself (4xx): retrying as is will not help.
    Rejected,
    /// The key exists and the write was conditional (`overwrite = false`, `If-None-Match:
    /// *`): nothing was written, and sending the same again will not change that.
    Exists,
}

/// The classifier: an S3 error code and HTTP status → what it means.
pub fn classify(status: u16, code: &str) -> ErrorClass {
    match code {
        "ExpiredToken"
        | "InvalidToken"
        | "TokenRefreshRequired"
        | "ExpiredTokenException"
        | "InvalidAccessKeyId" => ErrorClass::ExpiredToken,
        "BadDigest"
        | "InvalidDigest"
        | "XAmzContentChecksumMismatch"
        | "XAmzContentSHA256Mismatch" => ErrorClass::BadChecksum,
        "NoSuchBucket" => ErrorClass::NoSuchBucket,
        "NoSuchUpload" => ErrorClass::NoSuchUpload,
        "PreconditionFailed" => ErrorClass::Exists,
        // Another conditional write to the key was in progress: it may pass.
        "ConditionalRequestConflict" => ErrorClass::Transient,
        // The emulator says AccessDeniedException where S3 says AccessDenied.
        "AccessDenied" | "AccessDeniedException" => ErrorClass::Denied,
        "SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded" => {
            ErrorClass::Throttled
        }
        "RequestTimeout" | "InternalError" | "ServiceUnavailable" => ErrorClass::Transient,
        _ if status == 403 => ErrorClass::Denied,
        _ if status == 412 => ErrorClass::Exists,
        _ if status == 503 || status == 429 => ErrorClass::Throttled,
        _ if status >= 500 || status == 408 => ErrorClass::Transient,
        _ => ErrorClass::Rejected,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// S3 answered the request with an error.
    #[error("{op}: S3 answered {status} {code}: {message}")]
    Service {
        op: &'static str,
        class: ErrorClass,
        status: u16,
        code: String,
        message: String,
    },
    /// No usable answer: a timeout, a connection failure, an unreadable response.
    #[error("{op}: no answer from S3: {message}")]
    Transport { op: &'static str, message: String },
    /// No credentials to sign with (IMDS or STS unreachable, or the session refused).
    #[error("{op}: no credentials to sign the request: {message}")]
    Credentials {
        op: &'static str,
        message: String,
        /// The upload session was refused (an operator must act), not just unreachable.
        refused: bool,
    },
    /// S3 confirmed another checksum than the one sent.
    #[error("{op}: S3 stored CRC32C {answered}, but {sent} was sent")]
    ChecksumMismatch {
        op: &'static str,
        sent: String,
        answered: String,
    },
    /// The answer lacked what the operation needs (e.g. an UploadId).
    #[error("{op}: S3's answer lacked {missing}")]
    Incomplete {
        op: &'static str,
        missing: &'static str,
    },
    /// The local file could not be read for the request body.
    #[error("cannot read the file for upload: {0}")]
    Body(#[source] io::Error),
}

impl S3Error {
    /// The meaning of this error; errors without an S3 answer are transient (except a
    /// refused session and an unreadable body, which are [`ErrorClass::Rejected`]-like and
    /// told apart by [`S3Error::is_permanent`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            S3Error::Service { class, .. } => *class,
            S3Error::ChecksumMismatch { .. } => ErrorClass::BadChecksum,
            S3Error::Credentials { refused: true, .. } => ErrorClass::Denied,
            S3Error::Transport { .. }
            | S3Error::Credentials { .. }
            | S3Error::Incomplete { .. }
            | S3Error::Body(_) => ErrorClass::Transient,
        }
    }

    /// Will trying again without an operator's change not help?
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.class(),
            ErrorClass::Denied
                | ErrorClass::NoSuchBucket
                | ErrorClass::Rejected
                | ErrorClass::Exists
        )
    }

    /// A body that ended early: the file was truncated while it was being sent.
    pub fn is_truncated_body(&self) -> bool {
        matches!(self, S3Error::Body(e) if e.kind() == io::ErrorKind::UnexpectedEof)
    }

    /// Turns the SDK's error for `op` into an [`S3Error`].
    pub fn from_sdk<E>(
        op: &'static str,
        err: SdkError<E, aws_smithy_runtime_api::http::Response>,
    ) -> S3Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let SdkError::ServiceError(service) = &err else {
            return S3Error::Transport {
                op,
                message: crate::message::sentence(&err),
            };
        };
        let status = service.raw().status().as_u16();
        let code = service.err().code().unwrap_or("").to_string();
        let raw = service.err().message().unwrap_or("");
        if let Some(at) = raw.find(crate::message::ENCODED) {
            // Too long for a line; an operator who turns on debug logs can decode it.
            tracing::debug!(
                op,
                encoded_authorization_message = raw[at + crate::message::ENCODED.len()..].trim(),
                "S3 sent an encoded authorization message: decode it with `aws sts \
                 decode-authorization-message --encoded-message …`"
            );
        }
        let mut message = crate::message::tidy(raw);
        if let Some(fix) = fix_for(&code) {
            message = format!("{message} ({fix})");
        }
        S3Error::Service {
            op,
            class: classify(status, &code),
            status,
            code: if code.is_empty() {
                status.to_string()
            } else {
                code
            },
            message,
        }
    }
}

/// What to do about the refusals whose cause is the config, for the log line.
fn fix_for(code: &str) -> Option<&'static str> {
    match code {
        "AccessControlListNotSupported" => Some(
            "the bucket has ACLs disabled (Object Ownership \"bucket owner enforced\", the \
             default since 2023): remove `acl` from the config, or set it to \
             \"bucket-owner-full-control\"",
        ),
        "InvalidStorageClass" => Some("this bucket does not take that `storage_class`"),
        "KMS.NotFoundException" | "KMS.DisabledException" | "KMS.KMSInvalidStateException" => Some(
            "check `sse_kms_key_id`: the key must exist, be enabled and be in the bucket's region",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conditional_write_to_an_existing_key_is_its_own_class() {
        assert_eq!(classify(412, "PreconditionFailed"), ErrorClass::Exists);
        assert_eq!(classify(412, ""), ErrorClass::Exists);
        assert_eq!(
            classify(409, "ConditionalRequestConflict"),
            ErrorClass::Transient
        );
    }

    #[test]
    fn acl_refusals_say_what_to_change() {
        assert_eq!(
            classify(400, "AccessControlListNotSupported"),
            ErrorClass::Rejected
        );
        assert!(
            fix_for("AccessControlListNotSupported")
                .unwrap()
                .contains("remove `acl`")
        );
        assert!(fix_for("NoSuchKey").is_none());
    }

    #[test]
    fn codes_decide_before_statuses_and_statuses_decide_the_rest() {
        use ErrorClass::*;
        let table = [
            (400, "ExpiredToken", ExpiredToken),
            (403, "InvalidAccessKeyId", ExpiredToken),
            (400, "BadDigest", BadChecksum),
            (400, "XAmzContentChecksumMismatch", BadChecksum),
            (404, "NoSuchBucket", NoSuchBucket),
            (404, "NoSuchUpload", NoSuchUpload),
            (403, "AccessDenied", Denied),
            (400, "AccessDeniedException", Denied),
            (503, "SlowDown", Throttled),
            (400, "RequestTimeout", Transient),
            (500, "InternalError", Transient),
            // Unknown codes: the status decides.
            (403, "SomethingNew", Denied),
            (503, "", Throttled),
            (429, "", Throttled),
            (502, "", Transient),
            (408, "", Transient),
            (400, "InvalidArgument", Rejected),
            (411, "", Rejected),
        ];
        for (status, code, class) in table {
            assert_eq!(classify(status, code), class, "{status} {code}");
        }
    }

    #[test]
    fn only_refusals_are_permanent() {
        let service = |status, code: &str| S3Error::Service {
            op: "PutObject",
            class: classify(status, code),
            status,
            code: code.into(),
            message: String::new(),
        };
        assert!(service(403, "AccessDenied").is_permanent());
        assert!(service(404, "NoSuchBucket").is_permanent());
        assert!(service(400, "InvalidArgument").is_permanent());
        assert!(!service(503, "SlowDown").is_permanent());
        assert!(!service(400, "ExpiredToken").is_permanent());
        let transport = S3Error::Transport {
            op: "PutObject",
            message: "connection reset".into(),
        };
        assert!(!transport.is_permanent());
        let refused = S3Error::Credentials {
            op: "PutObject",
            message: "AccessDenied".into(),
            refused: true,
        };
        assert!(refused.is_permanent());
        let truncated = S3Error::Body(io::Error::from(io::ErrorKind::UnexpectedEof));
        assert!(truncated.is_truncated_body() && !truncated.is_permanent());
    }
}
