//! The free space of the file system that holds the data directory.

use std::path::Path;

/// Bytes available to the witness on the file system holding `dir`
/// (`None` when it cannot be asked).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: path is a valid C string and st points to writable memory
    // of the right type; statvfs fills it on success.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so st is initialised.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms.
    #[allow(clippy::unnecessary_cast)]
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}
