//! SQLite's memory, counted per thread, so one evaluation of admin SQL can
//! be held to a memory bound while others run beside it.
//!
//! SQLite lets a program supply its allocator (`SQLITE_CONFIG_MALLOC`)
//! before the library starts. This one is the system allocator with a
//! 16-byte header holding each block's size. While a thread has armed a
//! bound ([`arm`]), every byte SQLite allocates on that thread counts
//! against it and every byte it frees counts back; an allocation that would
//! pass the bound fails (SQLite reports `SQLITE_NOMEM`). The progress
//! handler ([`super::budget`]) also looks at the count, so most overruns
//! end as a clean interrupt before an allocation has to fail.

use rusqlite::ffi;
use std::alloc::{alloc, dealloc, realloc, Layout};
use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

const HEADER: usize = 16;

thread_local! {
    /// Net bytes allocated on this thread since the bound was armed.
    static USED: Cell<i64> = const { Cell::new(0) };
    /// The armed bound; 0 when nothing is armed.
    static CAP: Cell<i64> = const { Cell::new(0) };
    /// Set when an allocation was refused under the armed bound.
    static REFUSED: Cell<bool> = const { Cell::new(false) };
}

fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(HEADER)?, HEADER).ok()
}

/// Counts `delta` bytes against the armed bound, if any. False when the
/// bound refuses them (nothing is counted then).
fn charge(delta: i64) -> bool {
    let cap = CAP.try_with(Cell::get).unwrap_or(0);
    if cap == 0 {
        return true;
    }
    let used = USED.try_with(Cell::get).unwrap_or(0);
    if delta > 0 && used.saturating_add(delta) > cap {
        let _ = REFUSED.try_with(|r| r.set(true));
        return false;
    }
    let _ = USED.try_with(|u| u.set(used.saturating_add(delta)));
    true
}

unsafe fn size_of_block(p: *mut c_void) -> usize {
    // SAFETY: every block handed to SQLite starts HEADER bytes after the
    // start of an allocation whose first word holds the block's size.
    unsafe { *(p.cast::<u8>().sub(HEADER).cast::<usize>()) }
}

unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
    let Ok(size) = usize::try_from(n) else {
        return std::ptr::null_mut();
    };
    let Some(l) = layout(size) else {
        return std::ptr::null_mut();
    };
    if !charge(size as i64) {
        return std::ptr::null_mut();
    }
    // SAFETY: the layout has a non-zero size (HEADER > 0).
    let base = unsafe { alloc(l) };
    if base.is_null() {
        charge(-(size as i64));
        return std::ptr::null_mut();
    }
    // SAFETY: base is valid for at least HEADER bytes, 16-aligned.
    unsafe {
        base.cast::<usize>().write(size);
        base.add(HEADER).cast()
    }
}

unsafe extern "C" fn x_free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: p came from x_malloc/x_realloc (SQLite's contract).
    unsafe {
        let size = size_of_block(p);
        charge(-(size as i64));
        let base = p.cast::<u8>().sub(HEADER);
        if let Some(l) = layout(size) {
            dealloc(base, l);
        }
    }
}

unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    if p.is_null() {
        // SAFETY: forwarding SQLite's own call.
        return unsafe { x_malloc(n) };
    }
    let Ok(new) = usize::try_from(n) else {
        return std::ptr::null_mut();
    };
    // SAFETY: p came from x_malloc/x_realloc.
    let old = unsafe { size_of_block(p) };
    let (Some(old_l), Some(_)) = (layout(old), layout(new)) else {
        return std::ptr::null_mut();
    };
    let delta = new as i64 - old as i64;
    if !charge(delta) {
        return std::ptr::null_mut();
    }
    // SAFETY: base and old_l describe the live allocation; the new size
    // (new + HEADER) was checked to form a valid layout.
    unsafe {
        let base = realloc(p.cast::<u8>().sub(HEADER), old_l, new + HEADER);
        if base.is_null() {
            charge(-delta);
            return std::ptr::null_mut();
        }
        base.cast::<usize>().write(new);
        base.add(HEADER).cast()
    }
}

unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
    if p.is_null() {
        return 0;
    }
    // SAFETY: p came from x_malloc/x_realloc.
    c_int::try_from(unsafe { size_of_block(p) }).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
    n.saturating_add(7) & !7
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {}

/// Installs the counting allocator. Must run before SQLite is first used
/// in the process (before any connection is opened); returns whether the
/// memory bound is in force. Later calls return the first call's answer.
pub fn install() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let methods = ffi::sqlite3_mem_methods {
            xMalloc: Some(x_malloc),
            xFree: Some(x_free),
            xRealloc: Some(x_realloc),
            xSize: Some(x_size),
            xRoundup: Some(x_roundup),
            xInit: Some(x_init),
            xShutdown: Some(x_shutdown),
            pAppData: std::ptr::null_mut(),
        };
        // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to a methods struct,
        // which SQLite copies. It fails (SQLITE_MISUSE) once the library
        // has started, which is reported, not undefined.
        let rc = unsafe {
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_MALLOC,
                &methods as *const ffi::sqlite3_mem_methods,
            )
        };
        rc == ffi::SQLITE_OK
    })
}

/// While alive, SQLite's allocations on this thread count against `cap`.
pub struct Armed {
    _not_send: std::marker::PhantomData<*const ()>,
}

/// Arms a bound of `cap` bytes on this thread (0 or less: no bound).
pub fn arm(cap: usize) -> Armed {
    let cap = i64::try_from(cap).unwrap_or(i64::MAX);
    let _ = USED.try_with(|u| u.set(0));
    let _ = REFUSED.try_with(|r| r.set(false));
    let _ = CAP.try_with(|c| c.set(cap.max(0)));
    Armed {
        _not_send: std::marker::PhantomData,
    }
}

impl Armed {
    /// Whether the net bytes allocated since arming passed the bound, or
    /// an allocation was refused.
    pub fn over(&self) -> bool {
        let cap = CAP.try_with(Cell::get).unwrap_or(0);
        REFUSED.try_with(Cell::get).unwrap_or(false)
            || (cap > 0 && USED.try_with(Cell::get).unwrap_or(0) > cap)
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        let _ = CAP.try_with(|c| c.set(0));
    }
}

/// Runs `f` with this thread's bound (if any) set aside: nothing `f`
/// allocates counts.
pub fn paused<T>(f: impl FnOnce() -> T) -> T {
    let cap = CAP.try_with(|c| c.replace(0)).unwrap_or(0);
    let out = f();
    let _ = CAP.try_with(|c| c.set(cap));
    out
}

/// Whether the bound armed on this thread is exceeded (false when none is
/// armed): for the progress handler, which runs on the stepping thread.
pub fn over_on_this_thread() -> bool {
    let cap = CAP.try_with(Cell::get).unwrap_or(0);
    cap > 0
        && (REFUSED.try_with(Cell::get).unwrap_or(false)
            || USED.try_with(Cell::get).unwrap_or(0) > cap)
}
