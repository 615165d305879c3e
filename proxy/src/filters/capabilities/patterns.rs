//! Regular expressions for filters, compiled once per pattern and shared.
//! Compiling a pattern costs far more than a filter's whole request, and a
//! fresh instance per request could never keep one itself.

use std::sync::Arc;

use regex::{Regex, RegexBuilder};

use super::BoundedMap;

/// Patterns kept at once; past this the cache starts over.
const MAX_PATTERNS: usize = 4096;
/// Compiled size allowed for one pattern, so a hostile pattern cannot
/// exhaust memory or time.
const MAX_COMPILED_BYTES: usize = 1 << 20;

#[derive(Debug)]
pub struct PatternCache {
    compiled: BoundedMap<String, Arc<Regex>>,
}

impl Default for PatternCache {
    fn default() -> Self {
        Self { compiled: BoundedMap::new(MAX_PATTERNS) }
    }
}

impl PatternCache {
    /// The compiled `pattern`, or why it does not compile.
    pub fn get(&self, pattern: &str) -> Result<Arc<Regex>, String> {
        if let Some(regex) = self.compiled.get(pattern, Arc::clone) {
            return Ok(regex);
        }
        let regex = RegexBuilder::new(pattern)
            .size_limit(MAX_COMPILED_BYTES)
            .build()
            .map(Arc::new)
            .map_err(|e| format!("invalid pattern {pattern:?}: {e}"))?;
        // Every pattern is as good as another: a full cache starts over.
        self.compiled.insert(pattern.to_string(), regex.clone(), |_, _| false);
        Ok(regex)
    }

    pub fn is_match(&self, pattern: &str, text: &str) -> Result<bool, String> {
        Ok(self.get(pattern)?.is_match(text))
    }

    /// Each capture group's name (`None` for an unnamed one), group 0 first.
    pub fn capture_names(&self, pattern: &str) -> Result<Vec<Option<String>>, String> {
        Ok(self.get(pattern)?.capture_names().map(|name| name.map(str::to_string)).collect())
    }

    /// Replace the first match, expanding `$1` and `${name}`; `None` when
    /// nothing matches. A result that could be longer than `max_len` is
    /// refused before it is built: each `$` of the replacement can expand to
    /// the whole match, so a short call could otherwise ask the host for
    /// far more memory than the filter's own cap.
    pub fn replace(
        &self,
        pattern: &str,
        text: &str,
        replacement: &str,
        max_len: usize,
    ) -> Result<Option<String>, String> {
        let regex = self.get(pattern)?;
        let Some(caps) = regex.captures(text) else { return Ok(None) };
        let whole = caps.get(0).expect("group 0 always matches");
        let references = replacement.bytes().filter(|&b| b == b'$').count();
        let longest = (text.len() - whole.len())
            .saturating_add(replacement.len())
            .saturating_add(references.saturating_mul(whole.len()));
        if longest > max_len {
            return Err(format!(
                "the replacement could make a result of {longest} bytes ({references} references to a match of {} \
                 bytes), more than the {max_len} allowed",
                whole.len()
            ));
        }
        let mut out = String::with_capacity(text.len() + replacement.len());
        out.push_str(&text[..whole.start()]);
        caps.expand(replacement, &mut out);
        out.push_str(&text[whole.end()..]);
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_with_captures() {
        let cache = PatternCache::default();
        let out = cache.replace(r"^/old/(?P<rest>.*)$", "/old/a/b", "/new/${rest}", 1 << 20).unwrap();
        assert_eq!(out.as_deref(), Some("/new/a/b"));
        assert_eq!(cache.replace("^/x", "/y", "/z", 1 << 20).unwrap(), None);
        assert!(cache.is_match("(", "x").unwrap_err().contains("invalid pattern"));
        let names = cache.capture_names(r"^/(\d+)/(?P<slug>[a-z]+)(?:/x)?$").unwrap();
        assert_eq!(names, [None, None, Some("slug".to_string())]);
    }

    #[test]
    fn a_replacement_that_could_outgrow_the_limit_is_refused_before_it_is_built() {
        let cache = PatternCache::default();
        // 64 KiB of text, all matched, and 1,024 references to the match:
        // 64 MiB asked for by a call of 66 KiB.
        let text = "a".repeat(64 << 10);
        let replacement = "$0".repeat(1024);
        let error = cache.replace(".*", &text, &replacement, 16 << 20).unwrap_err();
        assert!(error.contains("1024 references to a match of 65536 bytes"), "{error}");
        assert!(error.contains("more than the 16777216 allowed"), "{error}");
        // Within the limit, the same call works, and `$$` is a dollar.
        let out = cache.replace("b+", "abbbc", "[$0$$]", 100).unwrap();
        assert_eq!(out.as_deref(), Some("a[bbb$]c"));
        // The bound counts the text around the match too.
        assert!(cache.replace("b", "abc", "x", 2).is_err());
        assert_eq!(cache.replace("b", "abc", "x", 3).unwrap().as_deref(), Some("axc"));
    }
}
