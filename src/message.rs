//! Text for people: an error's cause in one readable sentence, any text (file names) safe
//! for a terminal, and times as RFC 3339. The SDK's error chains can
//! carry a whole HTTP response (`Debug` of headers, body and extensions) or an encoded
//! authorization blob of hundreds of characters; neither helps in a log line.

use aws_smithy_types::error::display::DisplayErrorContext;

/// Longest cause kept in a message.
const MAX_CHARS: usize = 300;
const ENCODED: &str = "Encoded authorization failure message:";

/// `err` and its sources as one line, without response dumps or encoded blobs, cut to a
/// readable length.
pub fn cause(err: &(dyn std::error::Error + 'static)) -> String {
    tidy(&DisplayErrorContext(err).to_string())
}

/// The same for a message already in text.
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
        text.push_str(
            "(an encoded authorization message was left out: decode it with `aws sts \
             decode-authorization-message` to see which policy denied)",
        );
    }
    if text.chars().count() > MAX_CHARS {
        text = text.chars().take(MAX_CHARS).collect::<String>() + "…";
    }
    text
}

/// `text` safe to show on a terminal: control characters (C0, DEL, C1) and the bidirectional
/// overrides that reorder what is shown are written as escapes (`\n`, `\u{1b}`), and a
/// backslash as `\\`, so a producer's file name can neither recolour the operator's
/// terminal nor forge a log line, and the escaped text still tells names apart.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| {
        c == '\\'
            || c.is_control()
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
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
        assert!(t.starts_with("User is not authorized. (an encoded"), "{t}");
        assert!(
            t.contains("decode-authorization-message") && !t.contains("xxx"),
            "{t}"
        );
        assert!(tidy(&"y".repeat(1000)).chars().count() <= MAX_CHARS + 1);
        assert_eq!(tidy("a short cause"), "a short cause");
    }
}
