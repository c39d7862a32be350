//! From a file's path relative to `watch_dir` to its S3 object key.
//!
//! The rule, applied to each path component and joined with `/` after the prefix:
//! - valid UTF-8 without control characters is kept as it is (spaces, unicode, `%`, …);
//! - each byte that is not valid UTF-8, and each ASCII control character (U+0000–U+001F,
//!   U+007F, e.g. a newline), becomes `%XX` (upper-case hex);
//! - a literal `%` that is followed by two hex digits becomes `%25`, so every `%XX` in a key
//!   is an escape and the mapping can be reversed: two different paths never share a key.

use std::fmt::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// S3's limit on the UTF-8 length of a key.
pub const MAX_KEY_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "the object key would be {len} bytes; S3 allows at most {MAX_KEY_BYTES} (shorten the \
         path or the key_prefix)"
    )]
    TooLong { len: usize },
    #[error("the path has no usable components")]
    Empty,
}

/// `prefix` + the mapped relative path. The prefix was validated with the config.
pub fn object_key(prefix: &str, relative: &Path) -> Result<String, KeyError> {
    let mut key = String::from(prefix);
    let mut any = false;
    for component in relative.components() {
        let Component::Normal(name) = component else {
            return Err(KeyError::Empty);
        };
        if any {
            key.push('/');
        }
        push_component(&mut key, name.as_bytes());
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

fn push_escaped(key: &mut String, byte: u8) {
    let _ = write!(key, "%{byte:02X}");
}

fn push_component(key: &mut String, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let (valid, rest) = match std::str::from_utf8(bytes) {
            Ok(s) => (s, &[][..]),
            Err(e) => {
                let (good, bad) = bytes.split_at(e.valid_up_to());
                let valid = std::str::from_utf8(good).expect("checked by valid_up_to");
                let bad_len = e.error_len().unwrap_or(bad.len());
                push_valid(key, valid);
                for &b in &bad[..bad_len] {
                    push_escaped(key, b);
                }
                bytes = &bad[bad_len..];
                continue;
            }
        };
        push_valid(key, valid);
        bytes = rest;
    }
}

fn push_valid(key: &mut String, s: &str) {
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let escape_percent = c == '%'
            && chars.get(i + 1).is_some_and(char::is_ascii_hexdigit)
            && chars.get(i + 2).is_some_and(char::is_ascii_hexdigit);
        if c.is_ascii_control() || escape_percent {
            push_escaped(key, c as u8);
        } else {
            key.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn k(bytes: &[u8]) -> String {
        object_key("p/", Path::new(OsStr::from_bytes(bytes))).unwrap()
    }

    #[test]
    fn ordinary_names_are_kept_as_they_are() {
        assert_eq!(
            object_key("i-1/", Path::new("a/b c/ü 日本.txt")).unwrap(),
            "i-1/a/b c/ü 日本.txt"
        );
        assert_eq!(k(b"100%.txt"), "p/100%.txt");
        assert_eq!(k(b"50%off"), "p/50%off");
    }

    #[test]
    fn control_characters_and_invalid_utf8_are_escaped() {
        assert_eq!(k(b"line\nbreak"), "p/line%0Abreak");
        assert_eq!(k(b"tab\there"), "p/tab%09here");
        assert_eq!(k(b"bad\xff\xfename"), "p/bad%FF%FEname");
        assert_eq!(k(b"trunc\xe6\x97"), "p/trunc%E6%97");
        assert_eq!(k(b"mix\xff\xc3\xbc"), "p/mix%FFü");
    }

    #[test]
    fn a_literal_escape_lookalike_cannot_collide_with_an_escape() {
        assert_eq!(k(b"a%0Ab"), "p/a%250Ab");
        assert_ne!(k(b"a%0Ab"), k(b"a\nb"));
        assert_ne!(k(b"%FF"), k(b"\xff"));
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
    fn odd_components_are_refused() {
        assert_eq!(object_key("p/", Path::new("../x")), Err(KeyError::Empty));
        assert_eq!(object_key("p/", Path::new("")), Err(KeyError::Empty));
    }
}
