//! The instance metadata service (IMDSv2 only): the instance's id and region. The SDK's
//! client never falls back to IMDSv1 and honours `AWS_EC2_METADATA_SERVICE_ENDPOINT`.

use std::time::Duration;

use aws_config::environment::region::EnvironmentVariableRegionProvider;
use aws_config::imds;
use aws_config::meta::region::ProvideRegion;

use super::AuthError;

/// What the instance tells s3drop about itself.
#[derive(Debug, Clone)]
pub struct InstanceFacts {
    pub instance_id: String,
    pub region: String,
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

pub fn client() -> imds::Client {
    imds::Client::builder()
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
            message: crate::message::cause(&e),
        })
}

/// The region: the config's, else `AWS_REGION` (or `AWS_DEFAULT_REGION`), else IMDS's.
pub async fn region(
    imds: &imds::Client,
    configured: Option<&str>,
) -> Result<(String, RegionSource), AuthError> {
    if let Some(region) = configured {
        return Ok((region.to_string(), RegionSource::Config));
    }
    if let Some(region) = EnvironmentVariableRegionProvider::new().region().await {
        return Ok((region.to_string(), RegionSource::Environment));
    }
    let region = imds
        .get("/latest/meta-data/placement/region")
        .await
        .map_err(|e| AuthError::Region {
            message: crate::message::cause(&e),
        })?;
    Ok((region.as_ref().to_string(), RegionSource::Imds))
}
