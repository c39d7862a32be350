//! Strings with `{name}` placeholders from a known set, checked when the config is read and
//! filled in once the facts they name are known (`key_prefix`, tag and metadata values).

use super::{ConfigError, invalid};

/// Values for the placeholders: the facts of where s3drop runs.
pub struct PrefixFacts<'a> {
    /// None off EC2 (no instance metadata asked or answering).
    pub instance_id: Option<&'a str>,
    pub region: &'a str,
    pub hostname: &'a str,
}

/// The placeholders every template knows.
pub const FACTS: [&str; 3] = ["instance_id", "region", "hostname"];

/// A template as written, its placeholders checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    /// The config key it came from, for errors.
    key: &'static str,
}

impl Template {
    /// Parses `text`, the value of config key `key`, allowing [`FACTS`].
    pub fn parse(key: &'static str, text: &str) -> Result<Template, ConfigError> {
        let mut rest = text;
        while let Some(start) = rest.find('{') {
            let Some(len) = rest[start..].find('}') else {
                return Err(invalid(key, "has a `{` without a closing `}`"));
            };
            let name = &rest[start + 1..start + len];
            if !FACTS.contains(&name) {
                return Err(invalid(
                    key,
                    format!(
                        "unknown placeholder {{{name}}} (known: {})",
                        FACTS.map(|p| format!("{{{p}}}")).join(", ")
                    ),
                ));
            }
            rest = &rest[start + len + 1..];
        }
        if rest.contains('}') {
            return Err(invalid(key, "has a `}` without an opening `{`"));
        }
        Ok(Template {
            text: text.to_string(),
            key,
        })
    }

    /// Does the template use `{name}`?
    pub fn uses(&self, name: &str) -> bool {
        self.text.contains(&format!("{{{name}}}"))
    }

    /// The text without its placeholders: what must already fit a limit.
    pub fn literal(&self) -> String {
        let mut out = self.text.clone();
        for name in FACTS {
            out = out.replace(&format!("{{{name}}}"), "");
        }
        out
    }

    pub fn literal_len(&self) -> usize {
        self.literal().chars().count()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn expand(&self, facts: &PrefixFacts<'_>) -> Result<String, ConfigError> {
        let mut expanded = self.text.clone();
        if self.uses("instance_id") {
            let Some(id) = facts.instance_id else {
                return Err(invalid(
                    self.key,
                    "uses {instance_id}, but there is no instance id here (the instance \
                     metadata service did not answer): off EC2, use {hostname} instead",
                ));
            };
            expanded = expanded.replace("{instance_id}", id);
        }
        Ok(expanded
            .replace("{region}", facts.region)
            .replace("{hostname}", facts.hostname))
    }
}
