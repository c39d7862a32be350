//! `key_prefix`: a template whose placeholders only the instance's facts can fill, checked
//! so that the prefix can never widen the session policy.

use super::template::{PrefixFacts, Template};
use super::{ConfigError, invalid};

/// `key_prefix` before the instance's facts are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefixTemplate(Template);

impl KeyPrefixTemplate {
    pub fn parse(template: &str) -> Result<KeyPrefixTemplate, ConfigError> {
        let parsed = Template::parse("key_prefix", template)?;
        // Check the literal parts now so that a bad prefix fails at start-up, not at IMDS time.
        // (placeholders stand for non-empty values: their names keep the shape).
        check_expanded_prefix(&template.replace(['{', '}'], ""))?;
        Ok(KeyPrefixTemplate(parsed))
    }

    /// Does the template use `{name}`?
    pub fn uses(&self, name: &str) -> bool {
        self.0.uses(name)
    }

    pub fn expand(&self, facts: &PrefixFacts<'_>) -> Result<String, ConfigError> {
        let expanded = self.0.expand(facts)?;
        check_expanded_prefix(&expanded)?;
        Ok(expanded)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// The prefix ends up in an IAM resource ARN: characters that IAM reads as wildcards or
/// policy variables would widen the session policy, so they are refused.
fn check_expanded_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() {
        return Err(invalid(
            "key_prefix",
            "must not be empty: the session policy would then allow writing anywhere in the bucket",
        ));
    }
    if prefix.starts_with('/') {
        return Err(invalid(
            "key_prefix",
            "must not start with `/` (S3 keys have no leading slash)",
        ));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| matches!(c, '*' | '?' | '$') || c.is_control())
    {
        return Err(invalid(
            "key_prefix",
            format!(
                "must not contain {c:?}: IAM would read it as a wildcard or policy variable and \
                 widen the session policy"
            ),
        ));
    }
    // The prefix ends with `/`; every segment before it must be a plain name.
    if let Some(segment) = super::unsafe_segment(prefix.strip_suffix('/').unwrap_or(prefix)) {
        return Err(invalid(
            "key_prefix",
            format!(
                "{} (it makes {})",
                super::SEGMENT_RULE,
                super::describe_segment(segment)
            ),
        ));
    }
    if prefix.len() > 512 {
        return Err(invalid("key_prefix", "must be at most 512 bytes"));
    }
    Ok(())
}
