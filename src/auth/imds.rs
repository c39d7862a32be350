//! The instance metadata service (IMDSv2 only): the instance's id and region. The SDK's
//! client never falls back to IMDSv1 and honours `AWS_EC2_METADATA_SERVICE_ENDPOINT`.

use std::time::Duration;

use aws_config::environment::region::EnvironmentVariableRegionProvider;
use aws_config::imds;
use aws_config::meta::region::ProvideRegion;
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::retries::classifiers::{
    ClassifyRetry, RetryAction, SharedRetryClassifier,
};

use super::AuthError;

/// What s3drop knows about where it runs: from IMDS on EC2, the host name anywhere.
#[derive(Debug, Clone)]
pub struct Facts {
    /// None when IMDS was not needed (no instance source, no `{instance_id}`).
    pub instance_id: Option<String>,
    pub region: String,
    pub hostname: String,
}

impl Facts {
    /// Who this is in a session's name (CloudTrail): the instance, else the host.
    pub fn who(&self) -> &str {
        self.instance_id.as_deref().unwrap_or(&self.hostname)
    }

    /// The values templates' placeholders take.
    pub fn prefix_facts(&self) -> crate::config::PrefixFacts<'_> {
        crate::config::PrefixFacts {
            instance_id: self.instance_id.as_deref(),
            region: &self.region,
            hostname: &self.hostname,
        }
    }
}

/// The kernel's host name (`uname -n`), by system call: the unit's `ProcSubset=pid` hides
/// /proc/sys.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // when the name fits (the last byte stays 0 otherwise).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    let name = if rc == 0 {
        let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..len]).into_owned()
    } else {
        String::new()
    };
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

/// Where the region came from, for `check`'s report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionSource {
    Config,
    Environment,
    Imds,
}

impl RegionSource {
    pub fn describe(self) -> &'static str {
        match self {
            RegionSource::Config => "from the config",
            RegionSource::Environment => "from AWS_REGION",
            RegionSource::Imds => "from IMDS",
        }
    }
}

/// IMDS answers 429 when an instance asks too fast (it is throttled per instance); the
/// SDK's IMDS client retries only 5xx and 401. This classifier retries 429 too, with the
/// SDK's throttling backoff, and leaves the rest to the SDK's own.
#[derive(Debug, Default)]
struct ImdsThrottling(imds::client::ImdsResponseRetryClassifier);

impl ClassifyRetry for ImdsThrottling {
    fn name(&self) -> &'static str {
        "s3drop IMDS throttling"
    }

    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        match ctx.response().map(|r| r.status().as_u16()) {
            Some(429) => RetryAction::throttling_error(),
            _ => self.0.classify_retry(ctx),
        }
    }
}

pub fn client() -> imds::Client {
    imds::Client::builder()
        .retry_classifier(SharedRetryClassifier::new(ImdsThrottling::default()))
        .max_attempts(4)
        .connect_timeout(Duration::from_secs(2))
        .read_timeout(Duration::from_secs(2))
        .build()
}

pub async fn instance_id(imds: &imds::Client) -> Result<String, AuthError> {
    imds.get("/latest/meta-data/instance-id")
        .await
        .map(|id| id.as_ref().to_string())
        .map_err(|e| AuthError::Imds {
            what: "instance-id",
            message: crate::message::sentence(&e),
        })
}

/// The region without asking IMDS: the config's, else `AWS_REGION` (or
/// `AWS_DEFAULT_REGION`).
pub async fn local_region(configured: Option<&str>) -> Option<(String, RegionSource)> {
    if let Some(region) = configured {
        return Some((region.to_string(), RegionSource::Config));
    }
    let region = EnvironmentVariableRegionProvider::new().region().await?;
    Some((region.to_string(), RegionSource::Environment))
}

/// The region: [`local_region`], else IMDS's.
pub async fn region(
    imds: &imds::Client,
    configured: Option<&str>,
) -> Result<(String, RegionSource), AuthError> {
    if let Some(local) = local_region(configured).await {
        return Ok(local);
    }
    let region = imds
        .get("/latest/meta-data/placement/region")
        .await
        .map_err(|e| AuthError::Region {
            message: crate::message::sentence(&e),
        })?;
    Ok((region.as_ref().to_string(), RegionSource::Imds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_runtime_api::client::interceptors::context::Input;
    use aws_smithy_runtime_api::http::Response;
    use aws_smithy_types::body::SdkBody;

    fn classify(status: u16) -> RetryAction {
        let mut ctx = InterceptorContext::new(Input::doesnt_matter());
        ctx.set_response(Response::new(status.try_into().unwrap(), SdkBody::empty()));
        ImdsThrottling::default().classify_retry(&ctx)
    }

    #[test]
    fn imds_429_is_retried_as_throttling_and_the_rest_as_the_sdk_says() {
        assert_eq!(classify(429), RetryAction::throttling_error());
        assert_eq!(classify(500), RetryAction::server_error());
        assert_eq!(classify(401), RetryAction::server_error());
        assert_eq!(classify(404), RetryAction::NoActionIndicated);
    }

    #[test]
    fn hostname_is_the_kernels() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(super::hostname(), kernel.trim());
    }
}
