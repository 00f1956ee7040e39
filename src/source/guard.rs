//! The SIGBUS defence for memory-mapped windows.
//!
//! A file mapping is shared with every other process. If another process truncates the file
//! while tidegate has a window of it mapped, touching a page past the new end of file raises
//! `SIGBUS`, whose default action kills the process. This module owns the one process-wide
//! `SIGBUS` handler that turns that crash into an ordinary, per-file error:
//!
//! 1. Every live window registers its address range in a fixed, lock-free table
//!    ([`Registration`]).
//! 2. When `SIGBUS` hits an address inside a registered window, the handler maps a private,
//!    zero-filled anonymous page over the faulting page (`MAP_FIXED`), marks the window as
//!    *poisoned*, and returns; the faulting instruction is then retried and reads zeros.
//! 3. Whoever consumed the window's bytes (the hasher) checks [`Watch::poisoned`] afterwards
//!    and reports the file as truncated instead of using the zeros.
//!
//! Faults outside registered windows are passed on to the handler that was installed before
//! ours (Rust's own stack-overflow handler), or to the default action, so unrelated bugs still
//! crash loudly. The handler only uses async-signal-safe operations: atomic loads and stores,
//! `mmap` and `sigaction`.
//!
//! It does not own the mappings themselves (see `mmap.rs`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// How many windows can be registered at once. Windows past this are read with positioned
/// reads instead (see `mmap.rs`); with default options a job has only a handful live.
const SLOTS: usize = 4096;

/// Marks a slot that a thread has claimed but not yet filled in.
const CLAIMED: usize = usize::MAX;

struct Slot {
    /// Start address of the window, 0 when free, [`CLAIMED`] while being filled in.
    start: AtomicUsize,
    /// Length of the window in bytes.
    len: AtomicUsize,
    /// Set by the signal handler when a page of this window was replaced by zeros.
    poisoned: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // used only as an array initialiser
const FREE_SLOT: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    poisoned: AtomicBool::new(false),
};

static TABLE: [Slot; SLOTS] = [FREE_SLOT; SLOTS];

/// Page size and the previously installed action, captured once when the handler goes in.
struct Installed {
    page_size: usize,
    previous: libc::sigaction,
}

// SAFETY: `libc::sigaction` is plain old data (a function pointer, a mask and flags); it is
// written once before the handler is installed and only read afterwards.
unsafe impl Sync for Installed {}
// SAFETY: as above; nothing in it is tied to a thread.
unsafe impl Send for Installed {}

static INSTALLED: OnceLock<Option<Installed>> = OnceLock::new();

/// Installs the process-wide `SIGBUS` handler once. Returns `false` if that failed, in which
/// case callers must not rely on mapped reads surviving truncation.
pub(crate) fn install() -> bool {
    INSTALLED
        .get_or_init(|| {
            // SAFETY: sysconf has no preconditions.
            let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            let page_size = usize::try_from(page_size)
                .ok()
                .filter(|p| p.is_power_of_two())?;
            // SAFETY: a zeroed sigaction is a valid "no handler" value; sigaction() only
            // reads `action` and writes `previous`, both valid for the call.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_sigbus as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                let mut previous: libc::sigaction = std::mem::zeroed();
                // Read the previous action first so that the handler never sees it unset.
                if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
                    return None;
                }
                let installed = Installed {
                    page_size,
                    previous,
                };
                // The handler reads INSTALLED, which is only set once this closure returns;
                // until then a SIGBUS inside a window cannot happen, because no window can be
                // registered before `install` returns true.
                if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
                    return None;
                }
                Some(installed)
            }
        })
        .is_some()
}

/// A window's entry in the table; unregisters on drop.
#[derive(Debug)]
pub(crate) struct Registration {
    slot: usize,
}

impl Registration {
    /// Registers `[start, start + len)`. Returns `None` when the handler is not installed or
    /// the table is full.
    pub(crate) fn new(start: *const u8, len: usize) -> Option<Self> {
        if !install() || len == 0 {
            return None;
        }
        let start = start as usize;
        for (i, slot) in TABLE.iter().enumerate() {
            if slot
                .start
                .compare_exchange(0, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                slot.len.store(len, Ordering::Release);
                slot.poisoned.store(false, Ordering::Release);
                slot.start.store(start, Ordering::Release);
                return Some(Registration { slot: i });
            }
        }
        None
    }

    /// A handle that reports whether the window was poisoned.
    pub(crate) fn watch(&self) -> Watch {
        Watch { slot: self.slot }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        TABLE[self.slot].start.store(0, Ordering::Release);
    }
}

/// Reports whether a registered window had a page replaced by zeros.
///
/// Only meaningful while the window is alive, which holds for as long as any chunk borrowed
/// from it is alive (the chunk's `Bytes` keeps the window and its [`Registration`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watch {
    slot: usize,
}

impl Watch {
    /// True once a `SIGBUS` inside the window was absorbed.
    pub(crate) fn poisoned(&self) -> bool {
        TABLE[self.slot].poisoned.load(Ordering::Acquire)
    }
}

fn find_slot(addr: usize) -> Option<&'static Slot> {
    TABLE.iter().find(|slot| {
        let start = slot.start.load(Ordering::Acquire);
        start != 0
            && start != CLAIMED
            && addr >= start
            && addr - start < slot.len.load(Ordering::Acquire)
    })
}

extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: errno is thread-local; saving and restoring it keeps the interrupted code's
    // view of errno intact across our mmap call.
    let saved_errno = unsafe { *libc::__errno_location() };
    let installed = INSTALLED.get().and_then(Option::as_ref);
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    if let (Some(installed), Some(slot)) = (installed, find_slot(addr)) {
        let page = addr & !(installed.page_size - 1);
        // SAFETY: `page` lies inside a registered window, which is a live mapping owned by
        // tidegate (the faulting thread is reading it, so it cannot be unmapped under us).
        // Replacing one page of it with a private anonymous zero page is exactly what the
        // module contract promises; the window is unmapped as a whole later, which also
        // removes this page.
        let mapped = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                installed.page_size,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            slot.poisoned.store(true, Ordering::Release);
            // SAFETY: see above.
            unsafe { *libc::__errno_location() = saved_errno };
            return;
        }
    }
    // Not ours: hand the signal to whoever had it before.
    // SAFETY: calling the previously installed handler with the arguments we were given, or
    // restoring the default action so that the retried instruction kills the process as it
    // would have without us.
    unsafe {
        match installed.map(|i| i.previous) {
            Some(prev)
                if prev.sa_sigaction != libc::SIG_DFL && prev.sa_sigaction != libc::SIG_IGN =>
            {
                if prev.sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(prev.sa_sigaction);
                    f(signal, info, context);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(prev.sa_sigaction);
                    f(signal);
                }
            }
            _ => {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
            }
        }
        *libc::__errno_location() = saved_errno;
    }
}
