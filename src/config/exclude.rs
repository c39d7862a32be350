//! `exclude`: the globs of paths that are never uploaded.

use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::{ConfigError, invalid, quoted};

/// Exclusion globs. A pattern without `/` is matched against every component of the path
/// relative to `watch_dir` (so `.*` excludes dotfiles and everything under dot-directories);
/// a pattern with `/` is matched against the whole relative path.
#[derive(Debug, Clone)]
pub struct Exclude {
    by_component: GlobSet,
    by_path: GlobSet,
}

impl Exclude {
    pub fn new(patterns: &[String]) -> Result<Exclude, ConfigError> {
        let mut by_component = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        for pattern in patterns {
            let glob = Glob::new(pattern.trim_start_matches('/')).map_err(|e| {
                invalid("exclude", format!("pattern {q}: {e}", q = quoted(pattern)))
            })?;
            if pattern.contains('/') {
                by_path.add(glob);
            } else {
                by_component.add(glob);
            }
        }
        let build = |b: GlobSetBuilder| b.build().map_err(|e| invalid("exclude", e.to_string()));
        Ok(Exclude {
            by_component: build(by_component)?,
            by_path: build(by_path)?,
        })
    }

    /// `relative` is relative to `watch_dir`.
    pub fn is_excluded(&self, relative: &Path) -> bool {
        self.by_path.is_match(relative)
            || relative
                .components()
                .any(|c| self.by_component.is_match(c.as_os_str()))
    }
}
