//! An in-memory S3 bucket for tests: it keeps every version written under each key,
//! counts requests, checks CRC32C checksums and conditional writes as S3 does, and can be
//! told to fail (an error answer, a lost answer after the write, an answer without a
//! checksum, an expired session). Its operations go through the same session envelope as
//! the real client's ([`super::with_session`]), so `ExpiredToken` heals the same way.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Checksum, CompletedPart, S3Error, classify, confirm, crc32c_of, with_session};
use crate::auth::SessionCredentials;
use crate::file::OpenedFile;
use aws_credential_types::Credentials;

/// What the store does instead of answering normally, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// An error answer: 500 InternalError, 503 SlowDown, 403 AccessDenied, 404
    /// NoSuchUpload, …
    Answer { status: u16, code: &'static str },
    /// The request is carried out, then its answer is lost (a timeout after the body was
    /// sent): the client cannot know it worked.
    LostAnswer,
    /// A normal answer without the checksum (some S3-compatible servers).
    NoChecksum,
}

impl Fault {
    pub const INTERNAL_ERROR: Fault = Fault::Answer {
        status: 500,
        code: "InternalError",
    };
    pub const SLOW_DOWN: Fault = Fault::Answer {
        status: 503,
        code: "SlowDown",
    };
    pub const ACCESS_DENIED: Fault = Fault::Answer {
        status: 403,
        code: "AccessDenied",
    };
}

#[derive(Debug, Default)]
struct Upload {
    key: String,
    /// Part number → (ETag, bytes, CRC32C).
    parts: BTreeMap<i32, (String, Vec<u8>, String)>,
}

#[derive(Debug, Default)]
struct State {
    /// Every version written, oldest first.
    objects: BTreeMap<String, Vec<Vec<u8>>>,
    uploads: HashMap<String, Upload>,
    next_upload: u64,
    /// Requests per operation, answered or not.
    requests: BTreeMap<&'static str, usize>,
    faults: HashMap<&'static str, VecDeque<Fault>>,
    /// Faults for one request of an operation, by its number (1 = the first).
    faults_at: HashMap<(&'static str, usize), Fault>,
    /// Sessions (access key ids) the store answers `ExpiredToken` to.
    expired: HashSet<String>,
    /// How long each request takes.
    delay: Duration,
}

/// The bucket. Clones share it.
#[derive(Clone, Debug)]
pub struct Memory {
    bucket: String,
    /// `overwrite = false`: writes are conditional (`If-None-Match: *`).
    conditional: bool,
    credentials: SessionCredentials,
    state: Arc<Mutex<State>>,
}

impl Memory {
    pub fn new(bucket: &str, conditional: bool, credentials: SessionCredentials) -> Memory {
        Memory {
            bucket: bucket.to_string(),
            conditional,
            credentials,
            state: Arc::default(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory store lock")
    }

    /// The next request for `op` (`PutObject`, `UploadPart`, …) meets `fault`; queued
    /// faults are met in order.
    pub fn fail_next(&self, op: &'static str, fault: Fault) {
        self.state().faults.entry(op).or_default().push_back(fault);
    }

    /// Request number `n` (counting from 1, every request for `op` so far) meets `fault`.
    pub fn fail_request(&self, op: &'static str, n: usize, fault: Fault) {
        self.state().faults_at.insert((op, n), fault);
    }

    /// Requests signed by the session `access_key_id` are refused as expired.
    pub fn expire(&self, access_key_id: &str) {
        self.state().expired.insert(access_key_id.to_string());
    }

    /// Every request takes `delay` (a slow network), so a test can act meanwhile.
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// Every version stored under `key`, oldest first.
    pub fn versions(&self, key: &str) -> Vec<Vec<u8>> {
        self.state().objects.get(key).cloned().unwrap_or_default()
    }

    /// The keys with at least one version.
    pub fn keys(&self) -> Vec<String> {
        self.state().objects.keys().cloned().collect()
    }

    /// How many requests for `op` arrived.
    pub fn requests(&self, op: &str) -> usize {
        self.state().requests.get(op).copied().unwrap_or(0)
    }

    /// Every open multipart upload is gone, as when a lifecycle rule aborts stale ones.
    pub fn forget_uploads(&self) {
        self.state().uploads.clear();
    }

    /// Multipart uploads created and neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        self.state().uploads.len()
    }

    /// Counts the request, waits the delay, checks the session, and takes the next fault
    /// queued for `op`, if any.
    async fn begin(&self, op: &'static str, signed_by: &str) -> Result<Option<Fault>, S3Error> {
        let (delay, n) = {
            let mut state = self.state();
            let count = state.requests.entry(op).or_default();
            *count += 1;
            let n = *count;
            (state.delay, n)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut state = self.state();
        if state.expired.contains(signed_by) {
            return Err(answer(op, 400, "ExpiredToken"));
        }
        let fault = match state.faults_at.remove(&(op, n)) {
            Some(fault) => Some(fault),
            None => state.faults.get_mut(op).and_then(VecDeque::pop_front),
        };
        match fault {
            Some(Fault::Answer { status, code }) => Err(answer(op, status, code)),
            other => Ok(other),
        }
    }

    /// The answer to a request carried out: lost, without a checksum, or as it is.
    fn end(
        op: &'static str,
        fault: Option<Fault>,
        crc32c: &str,
    ) -> Result<Option<String>, S3Error> {
        match fault {
            Some(Fault::LostAnswer) => Err(S3Error::Transport {
                op,
                message: "timeout: the answer did not arrive".into(),
            }),
            Some(Fault::NoChecksum) => Ok(None),
            _ => Ok(Some(crc32c.to_string())),
        }
    }

    /// Stores `body` as a new version of `key`, unless the write is conditional and the key
    /// exists.
    fn store(&self, op: &'static str, key: &str, body: Vec<u8>) -> Result<(), S3Error> {
        let mut state = self.state();
        let versions = state.objects.entry(key.to_string()).or_default();
        if self.conditional && !versions.is_empty() {
            return Err(answer(op, 412, "PreconditionFailed"));
        }
        versions.push(body);
        Ok(())
    }

    /// The body is read as the request goes (after the delay), and checked against
    /// `crc32c` as S3 checks the header: another CRC is `BadDigest`, nothing stored.
    pub async fn put_object(
        &self,
        file: &OpenedFile,
        key: &str,
        crc32c: &str,
    ) -> Result<Checksum, S3Error> {
        with_session(&self.credentials, "PutObject", |signing| async move {
            let body = || read(file, 0, file.identity.size);
            self.put(&signing, key, body, Some(crc32c)).await
        })
        .await
    }

    pub async fn put_bytes(&self, key: &str, body: bytes::Bytes) -> Result<Checksum, S3Error> {
        with_session(&self.credentials, "PutObject", |signing| {
            let body = body.clone();
            async move { self.put(&signing, key, || Ok(body.to_vec()), None).await }
        })
        .await
    }

    /// One PutObject: the request (its delay, session check and fault), the body taken as
    /// it goes, checked against the CRC32C `sent` in a header if any, stored, answered.
    async fn put(
        &self,
        signing: &Credentials,
        key: &str,
        body: impl FnOnce() -> Result<Vec<u8>, S3Error>,
        sent: Option<&str>,
    ) -> Result<Checksum, S3Error> {
        const OP: &str = "PutObject";
        let fault = self.begin(OP, signing.access_key_id()).await?;
        let body = body()?;
        let crc32c = crc32c_of(&body);
        if sent.is_some_and(|sent| sent != crc32c) {
            return Err(answer(OP, 400, "BadDigest"));
        }
        self.store(OP, key, body)?;
        let answered = Self::end(OP, fault, &crc32c)?;
        confirm(OP, Some(&crc32c), answered.as_deref())
    }

    pub async fn create_multipart(&self, key: &str) -> Result<String, S3Error> {
        const OP: &str = "CreateMultipartUpload";
        with_session(&self.credentials, OP, |signing| async move {
            let fault = self.begin(OP, signing.access_key_id()).await?;
            let id = {
                let mut state = self.state();
                state.next_upload += 1;
                let id = format!("upload-{}", state.next_upload);
                state.uploads.insert(
                    id.clone(),
                    Upload {
                        key: key.to_string(),
                        ..Upload::default()
                    },
                );
                id
            };
            Self::end(OP, fault, "")?;
            Ok(id)
        })
        .await
    }

    pub async fn upload_part(
        &self,
        file: &OpenedFile,
        key: &str,
        upload_id: &str,
        (number, offset, len): (i32, u64, u64),
    ) -> Result<CompletedPart, S3Error> {
        const OP: &str = "UploadPart";
        with_session(&self.credentials, OP, |signing| async move {
            let fault = self.begin(OP, signing.access_key_id()).await?;
            let body = read(file, offset, len)?;
            let crc32c = crc32c_of(&body);
            let etag = format!("\"{number}-{crc32c}\"");
            {
                let mut state = self.state();
                let upload = state
                    .uploads
                    .get_mut(upload_id)
                    .filter(|u| u.key == key)
                    .ok_or_else(|| answer(OP, 404, "NoSuchUpload"))?;
                upload
                    .parts
                    .insert(number, (etag.clone(), body, crc32c.clone()));
            }
            let answered = Self::end(OP, fault, &crc32c)?;
            Ok(CompletedPart {
                number,
                etag,
                crc32c: confirm(OP, Some(&crc32c), answered.as_deref())?
                    .crc32c()
                    .map(String::from),
            })
        })
        .await
    }

    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> Result<Checksum, S3Error> {
        const OP: &str = "CompleteMultipartUpload";
        with_session(&self.credentials, OP, |signing| async move {
            let fault = self.begin(OP, signing.access_key_id()).await?;
            let (body, checksum) = {
                let state = self.state();
                let upload = state
                    .uploads
                    .get(upload_id)
                    .filter(|u| u.key == key)
                    .ok_or_else(|| answer(OP, 404, "NoSuchUpload"))?;
                let mut body = Vec::new();
                let mut crcs = Vec::new();
                for p in parts {
                    match upload.parts.get(&p.number) {
                        Some((etag, bytes, crc))
                            if *etag == p.etag && p.crc32c.as_ref().is_none_or(|c| c == crc) =>
                        {
                            body.extend_from_slice(bytes);
                            crcs.extend(aws_smithy_types::base64::decode(crc).unwrap_or_default());
                        }
                        _ => return Err(answer(OP, 400, "InvalidPart")),
                    }
                }
                (body, format!("{}-{}", crc32c_of(&crcs), parts.len()))
            };
            self.store(OP, key, body)?;
            self.state().uploads.remove(upload_id);
            let answered = Self::end(OP, fault, &checksum)?;
            confirm(OP, None, answered.as_deref())
        })
        .await
    }

    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        const OP: &str = "AbortMultipartUpload";
        with_session(&self.credentials, OP, |signing| async move {
            let fault = self.begin(OP, signing.access_key_id()).await?;
            let mut state = self.state();
            if state.uploads.get(upload_id).is_some_and(|u| u.key == key) {
                state.uploads.remove(upload_id);
            }
            drop(state);
            Self::end(OP, fault, "").map(drop)
        })
        .await
    }
}

/// An error answer as the real client reports it.
fn answer(op: &'static str, status: u16, code: &'static str) -> S3Error {
    S3Error::Service {
        op,
        class: classify(status, code),
        status,
        code: code.to_string(),
        message: format!("{code} (from the in-memory store)"),
    }
}

/// `len` bytes of `file` from `offset`; a file that ended early is a truncated body, as the
/// SDK's streaming body reports it.
fn read(file: &OpenedFile, offset: u64, len: u64) -> Result<Vec<u8>, S3Error> {
    let mut buf = vec![0u8; len as usize];
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                return Err(S3Error::Body(std::io::Error::from(
                    std::io::ErrorKind::UnexpectedEof,
                )));
            }
            Ok(n) => done += n,
            Err(e) => return Err(S3Error::Body(e)),
        }
    }
    Ok(buf)
}
