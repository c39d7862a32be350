//! What the ledger stores for one file, and how it is written down: JSON with a
//! `"version"` field, so a later release can change the record and still read this one
//! (as Vector versions its checkpoints). Records written before versioning (s3drop 0.1's
//! first release) have no version field and are read as version 1.

use serde::{Deserialize, Serialize};

use crate::file::FileIdentity;
use crate::metrics::FailureKind;

/// The version this release writes. 2: versioned; a checksum S3 did not confirm is
/// `null` (unverified) instead of missing or `""`. 3: a failure has its `kind`, an upload
/// says whether it was `multipart`.
pub const CURRENT_VERSION: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FileState {
    /// A multipart upload is under way: the parts S3 has confirmed so far, so a restart
    /// continues instead of starting over.
    Uploading {
        key: String,
        upload_id: String,
        part_size: u64,
        parts: Vec<PartRecord>,
    },
    /// S3 confirmed the object `key`; `crc32c` is the CRC32C (base64) S3 answered with
    /// (for a multipart upload, its checksum of the part checksums, which a whole-file
    /// CRC32C cannot be compared with), `None` when the server did not say (unverified).
    Uploaded {
        key: String,
        crc32c: Option<String>,
        #[serde(default)]
        multipart: bool,
    },
    /// The upload failed for a reason an operator must fix; retried later. `key` is empty
    /// when none was decided.
    Failed {
        key: String,
        #[serde(default = "unknown_kind")]
        kind: FailureKind,
        error: String,
    },
    /// `overwrite = false` and an object `key` already existed: not uploaded, and not
    /// tried again until SIGHUP or the file changes.
    Conflict { key: String },
}

/// Version 2 failures had no kind: S3 refused them.
fn unknown_kind() -> FailureKind {
    FailureKind::Rejected
}

impl FileState {
    /// Why a file in this state waits on an operator, if it does (STATUS, `s3drop status`).
    pub fn failure(&self) -> Option<(FailureKind, String)> {
        match self {
            FileState::Failed { kind, error, .. } => Some((*kind, error.clone())),
            FileState::Conflict { key } => Some((
                FailureKind::Conflict,
                format!("an object with key {key} already exists (overwrite = false)"),
            )),
            FileState::Uploading { .. } | FileState::Uploaded { .. } => None,
        }
    }

    /// The object key this state is about.
    pub fn key(&self) -> &str {
        match self {
            FileState::Uploading { key, .. }
            | FileState::Uploaded { key, .. }
            | FileState::Failed { key, .. }
            | FileState::Conflict { key } => key,
        }
    }
}

/// One part S3 confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    pub number: i32,
    pub etag: String,
    pub crc32c: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub identity: FileIdentity,
    #[serde(flatten)]
    pub state: FileState,
    pub updated_unix: u64,
}

impl FileRecord {
    /// A record of `state` for this version of the file, stamped now.
    pub fn new(identity: FileIdentity, state: FileState) -> FileRecord {
        FileRecord {
            identity,
            state,
            updated_unix: unix_now(),
        }
    }

    pub fn is_uploaded_as(&self, identity: &FileIdentity) -> bool {
        matches!(self.state, FileState::Uploaded { .. }) && self.identity == *identity
    }

    /// This very version of the file met an existing key (`overwrite = false`).
    pub fn is_conflict_as(&self, identity: &FileIdentity) -> bool {
        matches!(self.state, FileState::Conflict { .. }) && self.identity == *identity
    }
}

/// Seconds since the epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Serialize)]
struct Versioned<'a> {
    version: u32,
    #[serde(flatten)]
    record: &'a FileRecord,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: Option<u32>,
}

pub fn encode(record: &FileRecord) -> Vec<u8> {
    serde_json::to_vec(&Versioned {
        version: CURRENT_VERSION,
        record,
    })
    .expect("ledger records always serialize")
}

/// Reads a record of any version this release knows.
pub fn decode(bytes: &[u8]) -> Result<FileRecord, String> {
    let VersionOnly { version } = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    match version {
        None => v1::decode(bytes),
        Some(2) => {
            let mut record: FileRecord =
                serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
            // Version 2 did not record multipart-ness; S3 writes a multipart checksum as
            // `checksum-parts`, a whole object's without a dash.
            if let FileState::Uploaded {
                crc32c: Some(c),
                multipart,
                ..
            } = &mut record.state
            {
                *multipart = c.contains('-');
            }
            Ok(record)
        }
        Some(CURRENT_VERSION) => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Some(other) => Err(format!(
            "record version {other} is not known to this s3drop (it knows 1 to \
             {CURRENT_VERSION}); was the ledger written by a newer release?"
        )),
    }
}

/// The unversioned records of the first release: the same shape, with checksums always
/// strings (`""` where S3 confirmed none).
mod v1 {
    use super::*;

    #[derive(Deserialize)]
    #[serde(tag = "state", rename_all = "snake_case")]
    enum State {
        Uploading {
            key: String,
            upload_id: String,
            part_size: u64,
            parts: Vec<Part>,
        },
        Uploaded {
            key: String,
            crc32c: String,
        },
        Failed {
            key: String,
            error: String,
        },
    }

    #[derive(Deserialize)]
    struct Part {
        number: i32,
        etag: String,
        crc32c: String,
    }

    #[derive(Deserialize)]
    struct Record {
        identity: FileIdentity,
        #[serde(flatten)]
        state: State,
        updated_unix: u64,
    }

    fn checksum(s: String) -> Option<String> {
        Some(s).filter(|s| !s.is_empty())
    }

    pub fn decode(bytes: &[u8]) -> Result<FileRecord, String> {
        let old: Record = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let state = match old.state {
            State::Uploading {
                key,
                upload_id,
                part_size,
                parts,
            } => FileState::Uploading {
                key,
                upload_id,
                part_size,
                parts: parts
                    .into_iter()
                    .map(|p| PartRecord {
                        number: p.number,
                        etag: p.etag,
                        crc32c: checksum(p.crc32c),
                    })
                    .collect(),
            },
            State::Uploaded { key, crc32c } => FileState::Uploaded {
                multipart: crc32c.contains('-'),
                key,
                crc32c: checksum(crc32c),
            },
            State::Failed { key, error } => FileState::Failed {
                key,
                kind: FailureKind::Rejected,
                error,
            },
        };
        Ok(FileRecord {
            identity: old.identity,
            state,
            updated_unix: old.updated_unix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> FileIdentity {
        FileIdentity {
            dev: 1,
            inode: 2,
            size: 3,
            mtime_ns: 4,
        }
    }

    #[test]
    fn records_carry_their_version_and_read_back() {
        let record = FileRecord {
            identity: identity(),
            state: FileState::Uploaded {
                key: "p/a".into(),
                crc32c: None,
                multipart: false,
            },
            updated_unix: 5,
        };
        let bytes = encode(&record);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["version"], CURRENT_VERSION);
        assert_eq!(json["crc32c"], serde_json::Value::Null);
        assert_eq!(decode(&bytes).unwrap(), record);
    }

    #[test]
    fn first_release_records_are_read_with_empty_checksums_as_unverified() {
        let v1 = br#"{"identity":{"dev":1,"inode":2,"size":3,"mtime_ns":4},"state":"uploading","key":"k","upload_id":"u","part_size":8,"parts":[{"number":1,"etag":"e","crc32c":"AAAAAA=="},{"number":2,"etag":"f","crc32c":""}],"updated_unix":5}"#;
        let got = decode(v1).unwrap();
        let FileState::Uploading { parts, .. } = got.state else {
            panic!("{got:?}")
        };
        assert_eq!(parts[0].crc32c.as_deref(), Some("AAAAAA=="));
        assert_eq!(parts[1].crc32c, None);
        let v1 = br#"{"identity":{"dev":1,"inode":2,"size":3,"mtime_ns":4},"state":"uploaded","key":"k","crc32c":"","updated_unix":5}"#;
        assert_eq!(
            decode(v1).unwrap().state,
            FileState::Uploaded {
                key: "k".into(),
                crc32c: None,
                multipart: false,
            }
        );
    }

    #[test]
    fn version_2_records_gain_their_multipart_flag_and_a_failure_kind() {
        let v2 = br#"{"version":2,"identity":{"dev":1,"inode":2,"size":3,"mtime_ns":4},"state":"uploaded","key":"k","crc32c":"AAAAAA==-3","updated_unix":5}"#;
        assert!(matches!(
            decode(v2).unwrap().state,
            FileState::Uploaded {
                multipart: true,
                ..
            }
        ));
        let v2 = br#"{"version":2,"identity":{"dev":1,"inode":2,"size":3,"mtime_ns":4},"state":"failed","key":"k","error":"denied","updated_unix":5}"#;
        assert!(matches!(
            decode(v2).unwrap().state,
            FileState::Failed {
                kind: FailureKind::Rejected,
                ..
            }
        ));
        let v3 = FileRecord::new(
            identity(),
            FileState::Failed {
                key: String::new(),
                kind: FailureKind::InvalidKey,
                error: "too long".into(),
            },
        );
        assert_eq!(decode(&encode(&v3)).unwrap(), v3);
        let json: serde_json::Value = serde_json::from_slice(&encode(&v3)).unwrap();
        assert_eq!(json["kind"], "invalid_key");
    }

    #[test]
    fn a_newer_version_is_refused_by_name() {
        let err = decode(br#"{"version":99,"identity":{"dev":1,"inode":2,"size":3,"mtime_ns":4},"state":"failed","key":"k","error":"e","updated_unix":5}"#).unwrap_err();
        assert!(err.contains("version 99"), "{err}");
    }
}
