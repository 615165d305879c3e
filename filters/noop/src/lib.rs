//! A filter that does nothing. It measures the fixed cost of a filter, and it
//! is the smallest template to start from.

use cascade_filter::{Filter, export_filter};

#[derive(Clone)]
pub struct Noop;

impl Filter for Noop {
    type Config = serde::de::IgnoredAny;

    fn new(_config: Self::Config) -> Result<Self, String> {
        Ok(Noop)
    }
}

export_filter!(Noop);
