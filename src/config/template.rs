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
        Template::parse_with(key, text, &FACTS)
    }

    /// Parses `text` allowing the placeholders `known`.
    pub fn parse_with(
        key: &'static str,
        text: &str,
        known: &[&str],
    ) -> Result<Template, ConfigError> {
        let mut rest = text;
        while let Some(start) = rest.find('{') {
            let Some(len) = rest[start..].find('}') else {
                return Err(invalid(key, "has a `{` without a closing `}`"));
            };
            let name = &rest[start + 1..start + len];
            if !known.contains(&name) {
                let known: Vec<String> = known.iter().map(|p| format!("{{{p}}}")).collect();
                return Err(invalid(
                    key,
                    format!(
                        "unknown placeholder {{{name}}} (known: {})",
                        known.join(", ")
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

    /// The facts filled in, other placeholders kept (for the key template, whose file
    /// placeholders are filled per file).
    pub fn with_facts(&self, facts: &PrefixFacts<'_>) -> Result<Template, ConfigError> {
        Ok(Template {
            text: self.expand(facts)?,
            key: self.key,
        })
    }

    /// Fills `{name}` placeholders from `value`; placeholders it has no value for stay.
    pub fn render(&self, value: impl Fn(&str) -> Option<String>) -> String {
        let mut out = String::with_capacity(self.text.len());
        let mut rest = self.text.as_str();
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let len = rest[start..].find('}').expect("checked at parse");
            let name = &rest[start + 1..start + len];
            match value(name) {
                Some(v) => out.push_str(&v),
                None => out.push_str(&rest[start..=start + len]),
            }
            rest = &rest[start + len + 1..];
        }
        out.push_str(rest);
        out
    }

    /// The facts filled in; other placeholders (a key template's) stay.
    pub fn expand(&self, facts: &PrefixFacts<'_>) -> Result<String, ConfigError> {
        if self.uses("instance_id") && facts.instance_id.is_none() {
            return Err(invalid(
                self.key,
                "uses {instance_id}, but there is no instance id here (the instance \
                 metadata service did not answer): off EC2, use {hostname} instead",
            ));
        }
        Ok(self.render(|name| match name {
            "instance_id" => facts.instance_id.map(String::from),
            "region" => Some(facts.region.to_string()),
            "hostname" => Some(facts.hostname.to_string()),
            _ => None,
        }))
    }
}

/// The placeholders of `key_template` that each file fills: its path relative to
/// `watch_dir`, its name, the name without and with only its extension, and its
/// modification time (UTC).
pub const FILE_PLACEHOLDERS: [&str; 8] = ["path", "name", "stem", "ext", "yyyy", "mm", "dd", "hh"];

/// `key_template`: the part of each key after `key_prefix`.
pub fn parse_key_template(text: &str) -> Result<Template, ConfigError> {
    let known: Vec<&str> = FILE_PLACEHOLDERS.iter().chain(&FACTS).copied().collect();
    let template = Template::parse_with("key_template", text, &known)?;
    if !["path", "name", "stem"].iter().any(|p| template.uses(p)) {
        return Err(invalid(
            "key_template",
            "must name the file with {path}, {name} or {stem}: otherwise every file would get \
             the same key",
        ));
    }
    if text.starts_with('/') || text.chars().any(char::is_control) {
        return Err(invalid(
            "key_template",
            "must not start with `/` or contain control characters",
        ));
    }
    // With every placeholder filled, what the template itself adds must be plain segments.
    let sample = template.render(|_| Some("x".to_string()));
    if let Some(segment) = unsafe_segment(&sample) {
        return Err(invalid(
            "key_template",
            format!("{SEGMENT_RULE} (it makes {})", describe_segment(segment)),
        ));
    }
    Ok(template)
}

/// Why `.`, `..` and empty key segments are refused.
pub const SEGMENT_RULE: &str = "must not make `.`, `..` or empty path segments: tools that \
     download keys as paths (aws s3 sync, rclone) would write them outside their target \
     directory or lose them";

/// A refused segment in words.
pub fn describe_segment(segment: &str) -> &'static str {
    match segment {
        "" => "an empty segment, `//` or a `/` at an end",
        "." => "a `.` segment",
        _ => "a `..` segment",
    }
}

/// The first `.`, `..` or empty `/`-separated segment of `key`, if any.
pub fn unsafe_segment(key: &str) -> Option<&str> {
    key.split('/')
        .find(|segment| matches!(*segment, "" | "." | ".."))
}
