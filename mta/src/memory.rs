//! The allocator's part in bounded memory. Every binary that links the
//! MTA (the daemon, its tests and benches) allocates with mimalloc:
//! - under load, glibc's arena locks made tokio's workers wait on each
//!   other (futex waits in `__lll_lock_wait_private`, half again the CPU
//!   per message on the ingress benchmark);
//! - glibc keeps a large freed buffer in its heap (its mmap threshold
//!   grows up to 32 MB) and rarely gives heap memory back, so one 10 MB
//!   message kept tens of MB resident for good. mimalloc returns freed
//!   large blocks to the system on its own (after its purge delay).
//!
//! Built without transparent huge pages (`no_thp`): with them a mostly
//! idle arena held 2 MB pages, 13 MB more RSS at idle.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
