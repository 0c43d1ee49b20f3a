//! Faults set off on purpose by tests: `HELO_FILTER_FAULT=NAME[,NAME…]` in the daemon's
//! environment. Only in builds with the `fault-injection` feature (`cargo xtask test`'s
//! debug build); a release build has none of this.

/// Whether the fault `name` was asked for.
pub fn armed(name: &str) -> bool {
    std::env::var("HELO_FILTER_FAULT").is_ok_and(|faults| faults.split(',').any(|f| f == name))
}
