//! Path helpers that filters share.

/// `path` without `prefix`, when `prefix` ends on a segment boundary of
/// `path`: `/api` strips `/api` and `/api/x` (leaving `""` and `/x`), but not
/// `/apix`. A trailing `/` on the prefix is ignored.
pub fn strip_segment_prefix<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let prefix = prefix.trim_end_matches('/');
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Whether `path` is under `prefix` on a segment boundary.
pub fn has_segment_prefix(path: &str, prefix: &str) -> bool {
    strip_segment_prefix(path, prefix).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_prefixes() {
        assert_eq!(strip_segment_prefix("/api/x", "/api"), Some("/x"));
        assert_eq!(strip_segment_prefix("/api", "/api/"), Some(""));
        assert_eq!(strip_segment_prefix("/apix", "/api"), None);
        assert!(has_segment_prefix("/anything", "/"));
    }
}
