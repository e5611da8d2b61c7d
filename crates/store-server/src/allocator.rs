//! Tuning of mimalloc, the `store` binary's allocator.
//!
//! mimalloc v3 keeps the pages a thread frees for `purge_delay` (1 s) and
//! returns them to the OS only on a later allocation. The SQLite writer
//! thread sits idle after a large overwrite, so the store kept that
//! overwrite's memory: 196 MiB RSS right after loading 1 M offers, against
//! 101–115 MiB with immediate purging. Immediate purging measured no cost
//! (get 22–24 k/s and 100 k-offer overwrites 41–43 k offers/s either way;
//! BENCHMARKS.md).

use std::ffi::c_long;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (`mimalloc.h`):
/// the Rust bindings name the options around it but not this one. The
/// test below checks it is the option whose default is 1 000 ms.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The environment variable mimalloc reads the same option from.
pub const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// Makes freed memory go back to the OS at once, unless the operator set
/// `MIMALLOC_PURGE_DELAY` (mimalloc read it at start-up and it wins).
pub fn return_freed_memory_promptly() {
    if std::env::var_os(PURGE_DELAY_ENV).is_some() {
        return;
    }
    #[allow(unsafe_code)]
    // SAFETY: `mi_option_set` stores a value in mimalloc's option table
    // (bounds-checked by mimalloc) and has no other precondition; the
    // option is read with relaxed loads by any thread, so setting it while
    // other threads allocate is allowed.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}

/// The purge delay in effect, in milliseconds.
pub fn purge_delay_ms() -> c_long {
    #[allow(unsafe_code)]
    // SAFETY: `mi_option_get` only reads mimalloc's option table.
    unsafe {
        libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Index 15 is `purge_delay` only while mimalloc's enum keeps its
    /// order; its v3 default (1 000 ms, unlike any neighbour's) shows it.
    /// A mimalloc upgrade that moves it fails here, not in production.
    #[test]
    fn the_option_index_is_the_purge_delay() {
        if std::env::var_os(PURGE_DELAY_ENV).is_some() {
            return; // set by whoever runs the tests: the default is not visible
        }
        assert_eq!(purge_delay_ms(), 1000);
        return_freed_memory_promptly();
        assert_eq!(purge_delay_ms(), 0);
    }
}
