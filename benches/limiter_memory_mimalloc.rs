//! `limiter_memory` with the allocator the `sluice` binary uses: mimalloc (already a dependency
//! of the crate, so no new dependency). Same steps and output as `limiter_memory`.
//!
//! Run: `cargo bench --bench limiter_memory_mimalloc`.
// Calls into C (the bench calls into the allocator's C API): allowed here, denied elsewhere ([lints] in Cargo.toml).
#![allow(unsafe_code)]

#[path = "support/limiter_memory.rs"]
mod limiter_memory;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn collect() {
    extern "C" {
        /// mimalloc: frees and returns to the OS what it can (`force = true`). Part of the
        /// libmimalloc the `mimalloc` crate links; declared here to avoid a direct dependency on
        /// libmimalloc-sys.
        fn mi_collect(force: bool);
    }
    // SAFETY: no preconditions; mimalloc is linked as the global allocator above.
    unsafe { mi_collect(true) }
}

fn main() {
    limiter_memory::run(
        "mimalloc (as the sluice binary)",
        Some(("mi_collect(true)", collect)),
    );
}
