//! Text for people: any error as one readable sentence ([`sentence`], [`explain`]), any
//! text (file names) safe for a terminal ([`printable`]), and times as RFC 3339.
//!
//! The SDK's errors nest five or six layers ("dispatch failure: io error: client error
//! (Connect): …"), render an error answer's metadata with `Debug`, and (through
//! `DisplayErrorContext`) append a `Debug` dump of the whole chain, sometimes with the HTTP
//! response. An operator reads one line: the layers by `Display` only, each said once, the
//! wrappers that add nothing left out, and a fix that is never the part cut short.

use std::error::Error;

/// Longest line an error becomes (the fix included).
pub const MAX_CHARS: usize = 300;
pub const ENCODED: &str = "Encoded authorization failure message:";
/// Where a long text gives way.
const ELLIPSIS: &str = " … ";
/// Layers of the SDK's errors that say nothing the next layer does not.
const WRAPPERS: [&str; 7] = [
    "dispatch failure",
    "io error",
    "service error",
    "unhandled error",
    "client error (Connect)",
    "client error (SendRequest)",
    "an error occurred while loading credentials",
];

/// `err` and its sources as one line of at most [`MAX_CHARS`]: each layer by `Display`,
/// said once; an S3 or STS error answer as `Code: message`; no `Debug` structure, response
/// dump or encoded blob.
pub fn sentence(err: &(dyn Error + 'static)) -> String {
    let mut layers: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        next = e.source();
        let text = match e.downcast_ref::<aws_smithy_types::error::ErrorMetadata>() {
            Some(meta) => answer(meta.code(), meta.message()),
            None => tidy(&e.to_string()),
        };
        let text = text.trim().to_string();
        if !text.is_empty() {
            layers.push(text);
        }
    }
    let last = layers.len().saturating_sub(1);
    let mut kept: Vec<&str> = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let wrapper = WRAPPERS
            .iter()
            .any(|w| layer == w || layer.starts_with(&format!("{w} (")));
        let lower = layer.to_lowercase();
        let said_later = layers[i + 1..]
            .iter()
            .any(|l| l.to_lowercase().contains(&lower));
        let said_before = kept.iter().any(|k| k.to_lowercase().contains(&lower));
        if (i < last && (wrapper || said_later)) || said_before {
            continue;
        }
        kept.push(layer);
    }
    fit(&kept.join(": "), MAX_CHARS)
}

/// An error answer's code and message, as AWS documents print them.
fn answer(code: Option<&str>, message: Option<&str>) -> String {
    match (code, message.map(tidy)) {
        (Some(code), Some(message)) if !message.is_empty() => format!("{code}: {message}"),
        (Some(code), _) => code.to_string(),
        (None, Some(message)) => message,
        (None, None) => String::new(),
    }
}

/// `cause`, then what to do about it, in at most [`MAX_CHARS`]: the middle of the cause
/// gives way, never the fix.
pub fn explain(cause: &str, fix: &str) -> String {
    let fix = format!(" (fix: {fix})");
    let room = MAX_CHARS.saturating_sub(fix.chars().count());
    format!("{}{fix}", fit(cause, room))
}

/// `text` in at most `max` characters, its middle replaced by " … " if it is longer (the
/// start says what failed, the end why).
pub fn fit(text: &str, max: usize) -> String {
    let text = text.replace('\n', " ");
    let len = text.chars().count();
    if len <= max {
        return text;
    }
    let room = max.saturating_sub(ELLIPSIS.chars().count());
    let head = room * 2 / 3;
    let tail = room - head;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(len - tail).collect();
    format!("{}{ELLIPSIS}{}", start.trim_end(), end.trim_start())
}

/// A message already in text, without response dumps or encoded blobs.
pub fn tidy(text: &str) -> String {
    let mut text = text.replace('\n', " ");
    // A raw response rendered with Debug: keep what precedes it.
    for dump in ["raw: Response {", "Response { status:", "HttpResponse {"] {
        if let Some(at) = text.find(dump) {
            text.truncate(at);
            text = text.trim_end_matches([' ', ',', '(', ':']).to_string();
            text.push_str(" (response details left out)");
        }
    }
    if let Some(at) = text.find(ENCODED) {
        text.truncate(at);
        text.push_str("(encoded authorization message left out: logged at debug level)");
    }
    text
}

/// `text` safe to show on a terminal: control characters (C0, DEL, C1) and the bidirectional
/// overrides that reorder what is shown are written as escapes (`\n`, `\u{1b}`), and a
/// backslash as `\\`, so a producer's file name can neither recolour the operator's
/// terminal nor forge a log line, and the escaped text still tells names apart.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    escape(text, true)
}

/// Like [`printable`], leaving backslashes as they are: for text whose names were made
/// printable already (s3drop's own log messages), so escapes are not escaped twice.
pub fn controls_escaped(text: &str) -> std::borrow::Cow<'_, str> {
    escape(text, false)
}

fn escape(text: &str, backslash: bool) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| {
        (backslash && c == '\\')
            || c.is_control()
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' if backslash => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if escaped(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `time` as RFC 3339 in UTC (`2026-11-25T19:30:31Z`), as AWS writes times.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    aws_smithy_types::DateTime::from(time)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_bidi_overrides_are_escaped_and_names_stay_apart() {
        assert_eq!(
            printable("plain/name ünï 日本.txt"),
            "plain/name ünï 日本.txt"
        );
        assert_eq!(
            printable("a\u{1b}[31mred\u{7}\r\nINFO forged\u{9b}x"),
            "a\\u{1b}[31mred\\u{7}\\r\\nINFO forged\\u{9b}x"
        );
        assert_eq!(printable("evil\u{202E}txt.exe"), "evil\\u{202e}txt.exe");
        // A literal backslash-n and a newline stay different.
        assert_ne!(printable("a\\nb"), printable("a\nb"));
        for name in ["a\u{1b}b", "x\ny", "p\u{202E}q", "\u{85}"] {
            assert!(!printable(name).chars().any(|c| c.is_control()), "{name:?}");
        }
        // Text made printable already is left as it is, raw controls are still escaped.
        let once = printable("a\\b\u{1b}c").into_owned();
        assert_eq!(controls_escaped(&once), once);
        assert_eq!(controls_escaped("x\u{7}\\y"), "x\\u{7}\\y");
    }

    #[test]
    fn response_dumps_and_encoded_blobs_are_left_out() {
        let dumped = "unhandled error (InternalError): service error: raw: Response { status: \
                      StatusCode(500), headers: Headers { headers: {\"x\": \"y\"} }, body: \
                      SdkBody { inner: Once(Some(b\"<Error/>\")) }, extensions: Extensions }";
        assert_eq!(
            tidy(dumped),
            "unhandled error (InternalError): service error (response details left out)"
        );
        let blob = format!("User is not authorized. {ENCODED} {}", "x".repeat(600));
        let t = tidy(&blob);
        assert!(t.starts_with("User is not authorized. (encoded"), "{t}");
        assert!(t.contains("debug level") && !t.contains("xxx"), "{t}");
        assert_eq!(tidy("a short cause"), "a short cause");
    }

    #[test]
    fn long_texts_lose_their_middle_and_the_fix_stays_whole() {
        let long = format!("start {} end", "m".repeat(1000));
        let fitted = fit(&long, 100);
        assert_eq!(fitted.chars().count(), 100, "{fitted}");
        assert!(
            fitted.starts_with("start ") && fitted.ends_with(" end"),
            "{fitted}"
        );
        let fix = "run `aws sts decode-authorization-message --encoded-message …` as an admin";
        let line = explain(&long, fix);
        assert!(line.chars().count() <= MAX_CHARS, "{line}");
        assert!(line.ends_with(&format!("(fix: {fix})")), "{line}");
        assert_eq!(explain("short", "do this"), "short (fix: do this)");
    }

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn Error + 'static))
        }
    }
    fn layers(texts: &[&'static str]) -> Layer {
        texts
            .iter()
            .rev()
            .fold(None, |inner, t| Some(Layer(t, inner.map(Box::new))))
            .unwrap()
    }

    #[test]
    fn layers_are_said_once_and_wrappers_give_way_to_what_they_wrap() {
        let e = layers(&[
            "dispatch failure",
            "io error",
            "client error (Connect)",
            "tcp connect error",
            "Connection refused (os error 111)",
        ]);
        assert_eq!(
            sentence(&e),
            "tcp connect error: Connection refused (os error 111)"
        );
        let e = layers(&[
            "timeout",
            "HTTP connect timeout occurred after 3.1s",
            "timed out",
        ]);
        assert_eq!(
            sentence(&e),
            "HTTP connect timeout occurred after 3.1s: timed out"
        );
        // A wrapper that is all there is stays.
        assert_eq!(sentence(&layers(&["service error"])), "service error");
        let e = layers(&["a failed: b", "b"]);
        assert_eq!(sentence(&e), "a failed: b");
    }

    #[test]
    fn an_error_answer_reads_as_code_and_message() {
        let meta = aws_smithy_types::error::ErrorMetadata::builder()
            .code("AccessDenied")
            .message("not allowed")
            .build();
        assert_eq!(sentence(&meta), "AccessDenied: not allowed");
    }
}
