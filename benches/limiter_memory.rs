//! Memory of one `client_ip` rate limit with 1,000,000 distinct keys, and after their eviction,
//! under the **system allocator** (glibc malloc): bench binaries do not get the `sluice`
//! binary's `#[global_allocator]` (mimalloc, set in src/main.rs); `limiter_memory_mimalloc`
//! runs the same steps with it.
//!
//! Run: `cargo bench --bench limiter_memory` (about 5 s once built). `LIMITER_KEYS=N` changes
//! the number of keys. Steps and output: benches/support/limiter_memory.rs, docs/benchmarks.md.
// Calls into C (glibc's `malloc_trim` has no safe binding in std): allowed here, denied elsewhere ([lints] in Cargo.toml).
#![allow(unsafe_code)]

#[path = "support/limiter_memory.rs"]
mod limiter_memory;

#[cfg(target_env = "gnu")]
fn trim() {
    extern "C" {
        /// glibc: gives free memory at the top of the heap, and free whole pages inside it,
        /// back to the OS. Not in std; declared here rather than adding the libc crate.
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: no preconditions; glibc is the allocator on this target.
    unsafe {
        malloc_trim(0);
    }
}

fn main() {
    #[cfg(target_env = "gnu")]
    let release: Option<(&str, fn())> = Some(("malloc_trim(0)", trim));
    #[cfg(not(target_env = "gnu"))]
    let release: Option<(&str, fn())> = None;
    limiter_memory::run("system (glibc malloc)", release);
}
