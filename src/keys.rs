//! From a file's path relative to `watch_dir` to its S3 object key.
//!
//! The key is the relative path, `/`-separated, after the prefix, for every name that is
//! valid UTF-8 without control characters, `%` included (as aws-cli and rclone store it: a
//! file `report%20final.txt` is the key `report%20final.txt`). Only rare names are
//! encoded, per path component, in the manner of rclone's encoder:
//! - an ASCII control character (U+0000–U+001F, U+007F) becomes its Unicode "control
//!   picture" (U+2400–U+241F, U+2421): a newline is `␊`;
//! - a byte that is not valid UTF-8 becomes `‛` (U+201B) and two upper-case hex digits:
//!   0xFF is `‛FF`;
//! - a literal `‛` or control picture in a name is quoted with a `‛` before it.
//!
//! Every `‛` in a key thus starts a quote, and the mapping can be reversed: two different
//! paths never share a key.
//!
//! `key_template` ([`KeyRule`]) shapes what follows the prefix: `{path}` (the default) is
//! the encoded relative path; `{name}`, `{stem}`, `{ext}` parts of the encoded file name;
//! `{yyyy}`, `{mm}`, `{dd}`, `{hh}` the file's modification time in UTC.

use std::fmt::Write;

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;

use crate::config::Template;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// S3's limit on the UTF-8 length of a key.
pub const MAX_KEY_BYTES: usize = 1024;

/// Starts every quoted sequence.
const QUOTE: char = '\u{201B}';

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "the object key would be {len} bytes; S3 allows at most {MAX_KEY_BYTES} (shorten the \
         path or the key_prefix)"
    )]
    TooLong { len: usize },
    #[error("the path has no usable components")]
    Empty,
    #[error(
        "key_template {} (this file's key would have {})",
        crate::config::SEGMENT_RULE,
        crate::config::describe_segment(segment)
    )]
    Segment { segment: String },
}

/// How each file's key is made: the expanded prefix, then the key template with this
/// host's facts already filled in.
#[derive(Debug, Clone)]
pub struct KeyRule {
    prefix: String,
    template: Template,
}

impl KeyRule {
    pub fn new(prefix: String, template: Template) -> KeyRule {
        KeyRule { prefix, template }
    }

    /// The default rule, `{path}` after the prefix.
    pub fn by_path(prefix: String) -> KeyRule {
        let template = crate::config::parse_key_template("{path}").expect("the default parses");
        KeyRule::new(prefix, template)
    }

    /// Can two files share a key? Not when the key holds the whole path.
    pub fn is_injective(&self) -> bool {
        self.template.uses("path")
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of the file at `relative` modified at `mtime_ns` (nanoseconds since the
    /// epoch).
    pub fn key(&self, relative: &Path, mtime_ns: i128) -> Result<String, KeyError> {
        let path = encode_path(relative)?;
        let name = path.rsplit('/').next().unwrap_or(&path).to_string();
        let (stem, ext) = match name.rfind('.') {
            Some(dot) if dot > 0 => (name[..dot].to_string(), name[dot + 1..].to_string()),
            _ => (name.clone(), String::new()),
        };
        let seconds = i64::try_from(mtime_ns.div_euclid(1_000_000_000)).unwrap_or(0);
        // "2026-11-25T19:09:22Z"
        let time = DateTime::from_secs(seconds)
            .fmt(Format::DateTime)
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into());
        let rest = self.template.render(|placeholder| {
            Some(match placeholder {
                "path" => path.clone(),
                "name" => name.clone(),
                "stem" => stem.clone(),
                "ext" => ext.clone(),
                "yyyy" => time[0..4].to_string(),
                "mm" => time[5..7].to_string(),
                "dd" => time[8..10].to_string(),
                "hh" => time[11..13].to_string(),
                _ => return None,
            })
        });
        if let Some(segment) = crate::config::unsafe_segment(&rest) {
            return Err(KeyError::Segment {
                segment: segment.to_string(),
            });
        }
        let key = format!("{}{rest}", self.prefix);
        if key.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong { len: key.len() });
        }
        Ok(key)
    }
}

/// The relative path as it appears in keys: components encoded, `/`-separated.
pub fn encode_path(relative: &Path) -> Result<String, KeyError> {
    let mut key = String::new();
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
    Ok(key)
}

/// `prefix` + the mapped relative path. The prefix was validated with the config.
pub fn object_key(prefix: &str, relative: &Path) -> Result<String, KeyError> {
    let key = format!("{prefix}{}", encode_path(relative)?);
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong { len: key.len() });
    }
    Ok(key)
}

fn push_component(key: &mut String, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match std::str::from_utf8(bytes) {
            Ok(valid) => {
                push_valid(key, valid);
                return;
            }
            Err(e) => {
                let (good, bad) = bytes.split_at(e.valid_up_to());
                push_valid(
                    key,
                    std::str::from_utf8(good).expect("checked by valid_up_to"),
                );
                let bad_len = e.error_len().unwrap_or(bad.len());
                for &b in &bad[..bad_len] {
                    let _ = write!(key, "{QUOTE}{b:02X}");
                }
                bytes = &bad[bad_len..];
            }
        }
    }
}

/// The name an encoded key component stands for: the inverse of the mapping (a control
/// picture is its control character, `‛XX` the byte XX, `‛` before a special character that
/// character). `None` for text the mapping never makes. README promises the mapping is
/// reversible; the property tests hold it to that for every byte string.
pub fn decode_component(encoded: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(encoded.len());
    let mut chars = encoded.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            QUOTE => match chars.next()? {
                special if is_special(special) => {
                    out.extend_from_slice(special.encode_utf8(&mut [0; 4]).as_bytes())
                }
                hi => {
                    let lo = chars.next()?;
                    let byte = u8::from_str_radix(&format!("{hi}{lo}"), 16).ok()?;
                    out.push(byte);
                }
            },
            '\u{2421}' => out.push(0x7f),
            c if ('\u{2400}'..='\u{241F}').contains(&c) => out.push((c as u32 - 0x2400) as u8),
            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    Some(out)
}

/// The control picture of an ASCII control character.
fn control_picture(c: char) -> char {
    match c {
        '\u{7f}' => '\u{2421}',
        c => char::from_u32(0x2400 + c as u32).expect("U+2400..U+241F are characters"),
    }
}

/// Characters that stand for something else in a key, so a literal one is quoted.
fn is_special(c: char) -> bool {
    c == QUOTE || ('\u{2400}'..='\u{241F}').contains(&c) || c == '\u{2421}'
}

fn push_valid(key: &mut String, s: &str) {
    for c in s.chars() {
        if c.is_ascii_control() {
            key.push(control_picture(c));
        } else if c.is_control() {
            // C1 controls (U+0080..U+009F, e.g. NEL) have no control picture: their bytes
            // are written as `‛XX`, as invalid UTF-8 is, so no key carries a raw control.
            for b in c.encode_utf8(&mut [0; 4]).bytes() {
                let _ = write!(key, "{QUOTE}{b:02X}");
            }
        } else {
            if is_special(c) {
                key.push(QUOTE);
            }
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
    fn ordinary_names_are_kept_as_they_are_percent_included() {
        assert_eq!(
            object_key("i-1/", Path::new("a/b c/ü 日本.txt")).unwrap(),
            "i-1/a/b c/ü 日本.txt"
        );
        assert_eq!(k(b"100%.txt"), "p/100%.txt");
        assert_eq!(k(b"report%20final.txt"), "p/report%20final.txt");
        assert_eq!(k(b"a%0Ab"), "p/a%0Ab");
    }

    #[test]
    fn control_characters_and_invalid_utf8_are_encoded() {
        assert_eq!(k(b"line\nbreak"), "p/line\u{240A}break");
        assert_eq!(k(b"tab\there\x7f"), "p/tab\u{2409}here\u{2421}");
        assert_eq!(k(b"bad\xff\xfename"), "p/bad\u{201B}FF\u{201B}FEname");
        assert_eq!(k(b"trunc\xe6\x97"), "p/trunc\u{201B}E6\u{201B}97");
        assert_eq!(k(b"mix\xff\xc3\xbc"), "p/mix\u{201B}FFü");
        // A C1 control (NEL) is written as its bytes (found by the property test).
        assert_eq!(k("a\u{85}b".as_bytes()), "p/a\u{201B}C2\u{201B}85b");
    }

    #[test]
    fn literal_lookalikes_are_quoted_so_no_two_names_share_a_key() {
        assert_eq!(k("a\u{240A}b".as_bytes()), "p/a\u{201B}\u{240A}b");
        assert_eq!(k("‛FF".as_bytes()), "p/\u{201B}\u{201B}FF");
        let names: [&[u8]; 8] = [
            b"a\nb",
            "a\u{240A}b".as_bytes(),
            "a\u{201B}\u{240A}b".as_bytes(),
            b"\xff",
            "‛FF".as_bytes(),
            "‛‛FF".as_bytes(),
            b"a%0Ab",
            b"a%250Ab",
        ];
        let keys: std::collections::HashSet<String> = names.iter().map(|n| k(n)).collect();
        assert_eq!(keys.len(), names.len(), "{keys:?}");
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

    #[test]
    fn key_templates_fill_in_the_file_and_its_modification_time() {
        let template =
            crate::config::parse_key_template("{yyyy}/{mm}/{dd}/{hh}/{stem}.{ext}/{name}/{path}")
                .unwrap();
        let rule = KeyRule::new("p/".into(), template);
        // 2026-11-25T19:09:22Z
        let mtime = 1_795_633_762i128 * 1_000_000_000 + 5;
        assert_eq!(
            rule.key(Path::new("a/b/report.tar.gz"), mtime).unwrap(),
            "p/2026/11/25/19/report.tar.gz/report.tar.gz/a/b/report.tar.gz"
        );
        let by_path = KeyRule::by_path("p/".into());
        assert!(by_path.is_injective());
        assert_eq!(
            by_path.key(Path::new("x/y"), 0).unwrap(),
            object_key("p/", Path::new("x/y")).unwrap()
        );
        let names = KeyRule::new(
            "p/".into(),
            crate::config::parse_key_template("{stem}-{ext}").unwrap(),
        );
        assert!(!names.is_injective());
        assert_eq!(names.key(Path::new("d/.bashrc"), 0).unwrap(), "p/.bashrc-");
        assert_eq!(
            names.key(Path::new("d/line\nbreak.txt"), 0).unwrap(),
            "p/line\u{240A}break-txt"
        );
    }

    #[test]
    fn no_template_makes_a_dot_dotdot_or_empty_segment() {
        use crate::config::parse_key_template as parse;
        // Refused as written: what the template itself adds.
        for bad in [
            "../{path}",
            "./{name}",
            "a//{name}",
            "{name}/..",
            "{name}/",
            "x/./{stem}",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        // Refused per file: a placeholder that comes out empty or as a dot.
        let rule = KeyRule::new("p/".into(), parse("{ext}/{name}").unwrap());
        assert_eq!(
            rule.key(Path::new("d/README"), 0),
            Err(KeyError::Segment {
                segment: String::new()
            })
        );
        assert_eq!(rule.key(Path::new("d/a.txt"), 0).unwrap(), "p/txt/a.txt");
        let stems = KeyRule::new("p/".into(), parse("{stem}/{ext}").unwrap());
        // "..x": stem "." (the first dot is not the extension's) would be a dot segment.
        assert!(matches!(
            stems.key(Path::new("..x"), 0),
            Err(KeyError::Segment { .. })
        ));
    }
}
