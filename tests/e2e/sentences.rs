//! Every error an operator reads is one line: the real SDK's errors (from a refused port,
//! an IMDS without its TTL header, missing keys, STS and S3 error answers served by a
//! canned HTTP server, a TLS handshake with a plain-HTTP server, a name that does not
//! resolve) go through the paths s3drop's own code takes and must come out as one line of
//! at most 300 characters, without `Debug` structure, with the fix once and whole.

use std::net::SocketAddr;
use std::sync::Arc;

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use s3drop::auth::{AuthError, CredentialSource, SessionCredentials, mint::Minter};
use s3drop::chain::Link;
use s3drop::config::Config;
use s3drop::message::{MAX_CHARS, explain, sentence};
use s3drop::s3::{S3, WriteOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server that answers every request with `response` (reading each request whole first).
async fn canned(response: String) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let response = Arc::new(response);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                    let body: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if got.len() < end + 4 + body {
                        continue;
                    }
                    got.drain(..end + 4 + body);
                    if conn.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn http(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/xml\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn config() -> Config {
    Config::parse(
        "watch_dir = \"/w\"\nstate_dir = \"/s\"\nbucket = \"b-1\"\n\
         role_arn = \"arn:aws:iam::123456789012:role/s3drop-upload\"\n",
    )
    .unwrap()
}

fn sdk(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .region(aws_types::region::Region::new("eu-west-1"))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(Credentials::for_tests()))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2))
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build()
}

fn imds(endpoint: &str) -> aws_config::imds::Client {
    aws_config::imds::Client::builder()
        .endpoint(endpoint)
        .unwrap()
        .max_attempts(1)
        .build()
}

fn s3(endpoint: &str) -> S3 {
    let session = SessionCredentials::new(
        SharedCredentialsProvider::new(Credentials::for_tests()),
        "test".into(),
        Link::UploadRole,
    );
    S3::new(
        &sdk(endpoint),
        "b-1",
        true,
        session,
        WriteOptions::default(),
    )
}

/// What a PutObject through `endpoint` fails with.
async fn put_error(endpoint: &str) -> s3drop::s3::S3Error {
    s3(endpoint)
        .put_bytes("i-0abc/k", bytes::Bytes::from_static(b"x"))
        .await
        .unwrap_err()
}

/// The line the operator reads for `cause` and `fix`, and what it must say.
fn assert_readable(case: &str, line: &str, fix: &str, says: &str) {
    println!("{case}: {line}");
    assert!(!line.contains('\n'), "{case}: more than one line: {line}");
    let len = line.chars().count();
    assert!(len <= MAX_CHARS, "{case}: {len} characters: {line}");
    for debug in ["{", "}", "Some(", "kind:", "Response {"] {
        assert!(
            !line.contains(debug),
            "{case}: Debug structure {debug:?}: {line}"
        );
    }
    assert_eq!(line.matches(fix).count(), 1, "{case}: the fix once: {line}");
    assert!(
        line.ends_with(&format!("(fix: {fix})")),
        "{case}: fix whole: {line}"
    );
    assert!(line.contains(says), "{case}: does not say {says:?}: {line}");
}

#[tokio::test]
async fn every_error_is_one_readable_line_with_its_fix_once() {
    let config = config();
    let auth = |e: AuthError| (e.explain(&config), e.fix(&config).unwrap());

    // IMDS refused.
    let e = s3drop::auth::imds::instance_id(&imds("http://127.0.0.1:1"))
        .await
        .unwrap_err();
    let (line, fix) = auth(e);
    assert_readable("IMDS refused", &line, &fix, "Connection refused");

    // IMDS answers the token without its TTL header.
    let no_ttl = canned("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\ntoken".into()).await;
    let e = s3drop::auth::imds::instance_id(&imds(&format!("http://{no_ttl}")))
        .await
        .unwrap_err();
    let (line, fix) = auth(e);
    assert_readable("IMDS without TTL", &line, &fix, "TTL header");

    // Base credentials not loaded: a profile that no shared config file has (the
    // environment is left alone: other tests of this binary may run beside this one).
    let e = CredentialSource::Profile("s3drop-test-no-such-profile".into())
        .base(&imds("http://127.0.0.1:1"))
        .await
        .err()
        .unwrap();
    let (line, fix) = auth(e);
    assert_readable(
        "base credentials not loaded",
        &line,
        &fix,
        "s3drop-test-no-such-profile",
    );

    // STS refuses AssumeRole.
    let denied = canned(http(
        "403 Forbidden",
        "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User: \
         arn:aws:sts::123456789012:assumed-role/instance/i-0abc is not authorized to perform: \
         sts:AssumeRole on resource: arn:aws:iam::123456789012:role/s3drop-upload</Message>\
         </Error><RequestId>r-1</RequestId></ErrorResponse>",
    ))
    .await;
    let minter = Minter {
        session: config.session.clone(),
        duration: std::time::Duration::from_secs(3600),
    };
    let provider = minter.provider(&sdk(&format!("http://{denied}")), "i-0abc", "{}".into());
    let e = SessionCredentials::new(provider, minter.call("i-0abc"), minter.link())
        .get()
        .await
        .unwrap_err();
    assert!(e.is_permanent(), "{e}");
    let (line, fix) = auth(e);
    assert_readable(
        "STS AccessDenied",
        &line,
        &fix,
        "AccessDenied: User: arn:aws:sts",
    );

    // STS throttles.
    let throttled = canned(http(
        "400 Bad Request",
        "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate \
         exceeded</Message></Error><RequestId>r-2</RequestId></ErrorResponse>",
    ))
    .await;
    let provider = minter.provider(&sdk(&format!("http://{throttled}")), "i-0abc", "{}".into());
    let e = SessionCredentials::new(provider, minter.call("i-0abc"), minter.link())
        .get()
        .await
        .unwrap_err();
    // Nothing to fix: the schedule asks again.
    assert!(e.fix(&config).is_none(), "{e}");
    let line = e.explain(&config);
    println!("STS Throttling: {line}");
    assert!(
        line.contains("Throttling: Rate exceeded") && !line.contains("fix:"),
        "{line}"
    );

    // S3 denies, with an encoded authorization message far longer than a line.
    let s3_denied = canned(http(
        "403 Forbidden",
        &format!(
            "<Error><Code>AccessDenied</Code><Message>User: \
             arn:aws:sts::123456789012:assumed-role/s3drop-upload/i-0abc is not authorized to \
             perform: s3:PutObject on resource: \"arn:aws:s3:::b-1/elsewhere/k\" because no \
             session policy allows the s3:PutObject action. Encoded authorization failure \
             message: {}</Message><RequestId>r</RequestId></Error>",
            "Zm9v".repeat(200)
        ),
    ))
    .await;
    let write_fix = Link::WriteUnderPrefix.fix(Some(&config));
    let e = put_error(&format!("http://{s3_denied}")).await;
    let line = explain(&sentence(&e), &write_fix);
    assert_readable("S3 AccessDenied", &line, &write_fix, "AccessDenied");
    assert!(!line.contains("Zm9v"), "{line}");

    // S3 asks to slow down (after the SDK's own retry).
    let slow = canned(http(
        "503 Slow Down",
        "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
    ))
    .await;
    let e = put_error(&format!("http://{slow}")).await;
    let line = explain(&sentence(&e), "none needed; s3drop backs off");
    assert_readable(
        "S3 SlowDown",
        &line,
        "none needed; s3drop backs off",
        "SlowDown",
    );

    // TLS with a server that speaks plain HTTP.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = plain.accept().await {
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let e = put_error(&format!("https://{plain_addr}")).await;
    let line = explain(&sentence(&e), "check the endpoint");
    assert_readable(
        "TLS",
        &line,
        "check the endpoint",
        "PutObject: no answer from S3",
    );

    // A name that does not resolve.
    let e = put_error("https://bucket.s3.nothing.invalid").await;
    let line = explain(&sentence(&e), "check DNS");
    assert_readable("DNS", &line, "check DNS", "dns error");
}
