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
    /// As written (or with the facts filled in, for [`Template::with_facts`]).
    text: String,
    /// The text cut into literal runs and placeholders once, at parse: a value filled in
    /// later is never read as template text again, so a host name with a `{` (or one
    /// spelling `{path}`) stays literal.
    parts: Vec<Part>,
    /// The config key it came from, for errors.
    key: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Placeholder(String),
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
        let mut parts = Vec::new();
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
            if rest[..start].contains('}') {
                return Err(invalid(key, "has a `}` without an opening `{`"));
            }
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            parts.push(Part::Placeholder(name.to_string()));
            rest = &rest[start + len + 1..];
        }
        if rest.contains('}') {
            return Err(invalid(key, "has a `}` without an opening `{`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template {
            text: text.to_string(),
            parts,
            key,
        })
    }

    /// Does the template use `{name}`?
    pub fn uses(&self, name: &str) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Placeholder(n) if n == name))
    }

    /// The text without its placeholders: what must already fit a limit.
    pub fn literal(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Literal(text) => Some(text.as_str()),
                Part::Placeholder(_) => None,
            })
            .collect()
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
        self.check_facts(facts)?;
        let parts = self
            .parts
            .iter()
            .map(|part| match part {
                Part::Placeholder(name) => match fact(facts, name) {
                    Some(value) => Part::Literal(value),
                    None => part.clone(),
                },
                literal => literal.clone(),
            })
            .collect();
        Ok(Template {
            text: self.expand(facts)?,
            parts,
            key: self.key,
        })
    }

    /// Fills `{name}` placeholders from `value`; placeholders it has no value for stay.
    pub fn render(&self, value: impl Fn(&str) -> Option<String>) -> String {
        let mut out = String::with_capacity(self.text.len());
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Placeholder(name) => match value(name) {
                    Some(v) => out.push_str(&v),
                    None => {
                        out.push('{');
                        out.push_str(name);
                        out.push('}');
                    }
                },
            }
        }
        out
    }

    /// The facts filled in; other placeholders (a key template's) stay.
    pub fn expand(&self, facts: &PrefixFacts<'_>) -> Result<String, ConfigError> {
        self.check_facts(facts)?;
        Ok(self.render(|name| fact(facts, name)))
    }

    fn check_facts(&self, facts: &PrefixFacts<'_>) -> Result<(), ConfigError> {
        if self.uses("instance_id") && facts.instance_id.is_none() {
            return Err(invalid(
                self.key,
                "uses {instance_id}, but there is no instance id here (the instance \
                 metadata service did not answer): off EC2, use {hostname} instead",
            ));
        }
        Ok(())
    }
}

/// The value of fact placeholder `name`, if it is one and known here.
fn fact(facts: &PrefixFacts<'_>, name: &str) -> Option<String> {
    match name {
        "instance_id" => facts.instance_id.map(String::from),
        "region" => Some(facts.region.to_string()),
        "hostname" => Some(facts.hostname.to_string()),
        _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fact_with_braces_stays_literal_when_the_key_template_is_filled_per_file() {
        let template = parse_key_template("{hostname}/{path}").unwrap();
        let facts = PrefixFacts {
            instance_id: None,
            region: "eu-west-1",
            hostname: "{odd{path}host",
        };
        let rule = template.with_facts(&facts).unwrap();
        assert!(rule.uses("path"));
        let key = rule.render(|name| (name == "path").then(|| "a/b.txt".to_string()));
        assert_eq!(key, "{odd{path}host/a/b.txt");
    }
}
