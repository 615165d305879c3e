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

/// Whether `prefix` (a filter config's path prefix) is a path in the
/// normal form the host gives every path a filter sees and sets: ASCII, no
/// empty, `.` or `..` segment, and no `%`-escape but of a byte that is not
/// unreserved (those are written as they are) nor `/`, `\\` or NUL (which
/// the host refuses). A prefix in any other form never matches a request's
/// path, or makes a path the host refuses on every request; the error says
/// which part is wrong.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("{prefix:?} must start with '/'"));
    }
    let bytes = prefix.as_bytes();
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        match byte {
            b'%' => {
                let hex = prefix.get(at + 1..at + 3).filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
                let Some(hex) = hex else { return Err(format!("{prefix:?} has a malformed %-escape")) };
                if hex.bytes().any(|b| b.is_ascii_lowercase()) {
                    return Err(format!("{prefix:?}: write %{hex} as %{}, as paths are compared", hex.to_uppercase()));
                }
                let decoded = u8::from_str_radix(hex, 16).expect("two hex digits");
                if decoded.is_ascii_alphanumeric() || b"-._~".contains(&decoded) {
                    return Err(format!("{prefix:?}: write %{hex} as {:?}, as paths are compared", decoded as char));
                }
                if [b'/', b'\\', 0].contains(&decoded) {
                    return Err(format!("{prefix:?}: %{hex} is a path the host refuses"));
                }
                at += 3;
                continue;
            }
            b'?' | b'#' | b'\\' => return Err(format!("{prefix:?} holds {:?}, which no path has", byte as char)),
            b if b <= b' ' || b >= 0x7f => {
                return Err(format!("{prefix:?} must be ASCII without spaces (percent-encode the rest)"));
            }
            _ => at += 1,
        }
    }
    if prefix.contains("//") || prefix.split('/').any(|segment| segment == "." || segment == "..") {
        return Err(format!("{prefix:?} has an empty, '.' or '..' segment, which no path has"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_must_be_paths_in_normal_form() {
        for good in ["/", "/api", "/api/", "/caf%C3%A9", "/a;b", "/v1.2/x"] {
            assert_eq!(check_prefix(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("api", "must start with '/'"),
            ("/a%2Fb", "%2F is a path the host refuses"),
            ("/%61pi", "write %61 as 'a'"),
            ("/a%zz", "malformed"),
            ("/caf%c3%a9", "write %c3 as %C3"),
            ("/a%+5", "malformed"),
            ("/next?x", "holds '?'"),
            ("/a\\b", "holds '\\\\'"),
            ("/a b", "ASCII without spaces"),
            ("/café", "ASCII without spaces"),
            ("/a//b", "empty, '.' or '..'"),
            ("/a/../b", "empty, '.' or '..'"),
        ] {
            let error = check_prefix(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn segment_prefixes() {
        assert_eq!(strip_segment_prefix("/api/x", "/api"), Some("/x"));
        assert_eq!(strip_segment_prefix("/api", "/api/"), Some(""));
        assert_eq!(strip_segment_prefix("/apix", "/api"), None);
        assert!(has_segment_prefix("/anything", "/"));
    }
}
