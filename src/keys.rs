//! From a file's path relative to `watch_dir` to its S3 object key.

use std::path::{Component, Path};

/// S3's limit on the UTF-8 length of a key.
pub const MAX_KEY_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the file name is not valid UTF-8, so it has no S3 key (rename the file)")]
    NotUtf8,
    #[error("the object key would be {len} bytes; S3 allows at most {MAX_KEY_BYTES}")]
    TooLong { len: usize },
    #[error("the path has no usable components")]
    Empty,
}

/// `prefix` + the relative path with `/` separators. The prefix was validated with the
/// config; only the relative part is checked here.
pub fn object_key(prefix: &str, relative: &Path) -> Result<String, KeyError> {
    let mut key = String::from(prefix);
    let mut any = false;
    for component in relative.components() {
        let Component::Normal(name) = component else {
            return Err(KeyError::Empty);
        };
        let name = name.to_str().ok_or(KeyError::NotUtf8)?;
        if any {
            key.push('/');
        }
        key.push_str(name);
        any = true;
    }
    if !any {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong { len: key.len() });
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn nested_paths_join_with_slashes_under_the_prefix() {
        assert_eq!(
            object_key("i-1/", Path::new("a/b c/ü.txt")).unwrap(),
            "i-1/a/b c/ü.txt"
        );
    }

    #[test]
    fn keys_over_the_s3_limit_are_refused() {
        let at_limit = "x".repeat(1020);
        assert_eq!(
            object_key("pre/", Path::new(&at_limit)).unwrap().len(),
            1024
        );
        assert!(matches!(
            object_key("pre/", Path::new(&"y".repeat(1021))),
            Err(KeyError::TooLong { len: 1025 })
        ));
    }

    #[test]
    fn invalid_utf8_and_odd_components_are_refused() {
        let bad = Path::new(OsStr::from_bytes(b"a\xff"));
        assert_eq!(object_key("p/", bad), Err(KeyError::NotUtf8));
        assert_eq!(object_key("p/", Path::new("../x")), Err(KeyError::Empty));
        assert_eq!(object_key("p/", Path::new("")), Err(KeyError::Empty));
    }
}
