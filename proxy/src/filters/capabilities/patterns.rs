//! Regular expressions for filters, compiled once per pattern and shared.
//! Compiling a pattern costs far more than a filter's whole request, and a
//! fresh instance per request could never keep one itself.
//!
//! The cache is host memory no filter's cap counts, and a filter can make
//! its patterns from request input, so it is bounded by bytes, not by count:
//! each pattern is weighed as its compiled size plus, for each thread that
//! may search with it, the most its search caches can grow to
//! ([`search_cache_bound`]).

use std::sync::Arc;

use regex_automata::meta::{self, BuildError, Regex};
use regex_automata::util::syntax;
use regex_automata::{MatchKind, PatternID};

use super::BoundedMap;

/// Compiled size allowed for one pattern, so a hostile pattern cannot
/// exhaust memory or time.
const MAX_COMPILED_BYTES: usize = 1 << 20;
/// The lazy DFA's transition cache of one pattern, for each thread that
/// searches with it; past this it starts its cache over, or gives way to a
/// slower engine that needs none.
const SEARCH_CACHE_BYTES: usize = 64 << 10;
/// What every cached pattern may weigh together; past this the cache
/// starts over. Each pattern's weight grows with the threads that may search
/// it, so the budget does too ([`PatternCache::for_threads`]).
const CACHE_BYTES: usize = 64 << 20;
/// The budget for each searching thread past the fourth.
const CACHE_BYTES_PER_THREAD: usize = 16 << 20;

#[derive(Debug)]
pub struct PatternCache {
    compiled: BoundedMap<String, Arc<Regex>>,
    /// Threads that may search at once, each with its own search caches,
    /// which the pattern keeps for the next search.
    searching_threads: usize,
}

impl Default for PatternCache {
    fn default() -> Self {
        Self::new(CACHE_BYTES, 1)
    }
}

/// `pattern` compiled as the `regex` crate's `Regex::new` would (leftmost
/// first, UTF-8), within the size limits above.
fn compile(pattern: &str) -> Result<Regex, String> {
    let config = meta::Config::new()
        .match_kind(MatchKind::LeftmostFirst)
        .utf8_empty(true)
        .nfa_size_limit(Some(MAX_COMPILED_BYTES))
        .onepass_size_limit(Some(MAX_COMPILED_BYTES))
        .dfa_size_limit(Some(MAX_COMPILED_BYTES))
        .hybrid_cache_capacity(SEARCH_CACHE_BYTES)
        // Its visited set can reach 256 KiB per thread: the PikeVM and the
        // one-pass DFA find the same captures.
        .backtrack(false);
    meta::Builder::new()
        .configure(config)
        .syntax(syntax::Config::new().utf8(true))
        .build(pattern)
        .map_err(|e| format!("invalid pattern {pattern:?}: {}", why(&e)))
}

/// What is wrong with a pattern: the parser's own message, with its caret
/// under the fault, or the size limit it exceeds.
fn why(error: &BuildError) -> String {
    if let Some(limit) = error.size_limit() {
        format!("compiled, it is larger than the {limit} bytes allowed")
    } else if let Some(syntax) = error.syntax_error() {
        syntax.to_string()
    } else {
        error.to_string()
    }
}

/// The most one thread's search caches for `regex` can hold: the lazy DFA,
/// forward and reverse, at their capacity, and the PikeVM's two tables of
/// capture slots per NFA state with its two sets of states (an NFA state
/// takes at least 16 bytes of `memory_usage`, a slot 8 bytes).
fn search_cache_bound(regex: &Regex) -> usize {
    let slots = regex.group_info().slot_len();
    let pikevm = regex.memory_usage().saturating_mul(slots.saturating_add(1));
    (2 * SEARCH_CACHE_BYTES).saturating_add(pikevm)
}

impl PatternCache {
    /// The cache of a proxy with `workers` worker threads: they and the
    /// thread checking configs may search, and the budget grows with them.
    pub fn for_threads(workers: usize) -> Self {
        let searching = workers + 1;
        Self::new(CACHE_BYTES.max(CACHE_BYTES_PER_THREAD.saturating_mul(searching)), searching)
    }

    /// A cache whose patterns weigh at most `bytes` together, searched by
    /// up to `searching_threads` threads at once.
    pub fn new(bytes: usize, searching_threads: usize) -> Self {
        Self { compiled: BoundedMap::new(bytes), searching_threads: searching_threads.max(1) }
    }

    /// The compiled `pattern`, or why it does not compile.
    pub fn get(&self, pattern: &str) -> Result<Arc<Regex>, String> {
        if let Some(regex) = self.compiled.get(pattern, Arc::clone) {
            return Ok(regex);
        }
        let regex = Arc::new(compile(pattern)?);
        let weight = search_cache_bound(&regex)
            .saturating_mul(self.searching_threads)
            .saturating_add(regex.memory_usage())
            .saturating_add(pattern.len());
        // Every pattern is as good as another: a full cache starts over. One
        // heavier than the whole cache is not kept: its caches go with it
        // after this call.
        self.compiled.insert_weighing(pattern.to_string(), regex.clone(), weight, |_, _| false);
        Ok(regex)
    }

    /// What the cached patterns weigh together.
    pub fn weight(&self) -> usize {
        self.compiled.weight()
    }

    pub fn is_match(&self, pattern: &str, text: &str) -> Result<bool, String> {
        Ok(self.get(pattern)?.is_match(text))
    }

    /// Each capture group's name (`None` for an unnamed one), group 0 first.
    pub fn capture_names(&self, pattern: &str) -> Result<Vec<Option<String>>, String> {
        let regex = self.get(pattern)?;
        Ok(regex.group_info().pattern_names(PatternID::ZERO).map(|name| name.map(str::to_string)).collect())
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
        let mut caps = regex.create_captures();
        regex.captures(text, &mut caps);
        let Some(whole) = caps.get_match() else { return Ok(None) };
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
        caps.interpolate_string_into(text, replacement, &mut out);
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
    fn the_cache_is_bounded_by_what_its_patterns_weigh() {
        let budget = 16 << 20;
        let cache = PatternCache::new(budget, 1);
        // Each of these compiles to a large automaton (Unicode classes,
        // repeated) from a pattern of a few bytes, as a filter could make
        // from request input.
        let mut most = 0;
        for i in 0..64 {
            let pattern = format!(r"\w{{20}}{i}");
            assert!(cache.is_match(&pattern, &format!("{}{i}", "é".repeat(20))).unwrap(), "{pattern}");
            assert!(cache.weight() <= budget, "{} bytes held after {pattern}", cache.weight());
            most = most.max(cache.weight());
        }
        assert!(most > budget / 2, "the cache kept too little: {most}");
        // Each thread that may search keeps its own caches: they count.
        let threads = PatternCache::new(budget, 4);
        threads.get("x(a)(b)").unwrap();
        let one = PatternCache::new(budget, 1);
        one.get("x(a)(b)").unwrap();
        assert!(threads.weight() > 3 * one.weight(), "{} against {}", threads.weight(), one.weight());
        // A pattern heavier than the whole cache works, and is not kept.
        let small = PatternCache::new(1 << 20, 1);
        assert!(small.is_match(r"\w{20}", &"x".repeat(20)).unwrap());
        assert_eq!(small.weight(), 0);
        // One pattern heavier than the per-pattern limit is refused.
        let error = cache.is_match(r"\w{5000}", "x").unwrap_err();
        assert!(error.contains("larger than the 1048576 bytes allowed"), "{error}");
        // A syntax error keeps the parser's message.
        let error = cache.is_match("a(b", "x").unwrap_err();
        assert!(error.contains("unclosed group"), "{error}");
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
