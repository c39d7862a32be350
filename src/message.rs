//! Text for people: an error's cause in one readable sentence, and times as RFC 3339. The SDK's error chains can
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
