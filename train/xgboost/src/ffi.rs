//! XGBoost's C API (`include/xgboost/c_api.h` of 3.x), the functions this
//! crate calls, resolved from `libxgboost.so` at run time.
//!
//! The library is looked for at `$RAYFORGE_XGBOOST_LIB` (what
//! `scripts/xgboost.sh` exports), then where that script puts it in the
//! download cache. Every call returns 0 or -1; [`check`] turns -1 into
//! [`Error::XGBoost`] with `XGBGetLastError`'s text (kept per thread by
//! XGBoost).

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// XGBoost's `bst_ulong`.
pub(crate) type BstUlong = u64;
/// A `DMatrixHandle`, `BoosterHandle` or `TrackerHandle`.
pub(crate) type Handle = *mut c_void;

/// The version of XGBoost scripts/xgboost.sh sets up (and the one this
/// binding was written against).
pub const XGBOOST_VERSION: &str = "3.2.0";

macro_rules! api {
    ($($name:ident: fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        /// The library and the functions resolved from it (named as in
        /// c_api.h).
        #[allow(non_snake_case)]
        pub(crate) struct Api {
            path: PathBuf,
            $(pub(crate) $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
            // Last, so it is dropped after the pointers into it (never, in
            // practice: the library lives as long as the process).
            _lib: libloading::Library,
        }

        impl Api {
            /// Resolves every function; the first one missing is named.
            ///
            /// # Safety
            /// `lib` must be XGBoost's library, whose symbols have the
            /// signatures declared here (those of c_api.h in 3.x).
            #[allow(non_snake_case)]
            unsafe fn resolve(lib: libloading::Library, path: PathBuf) -> std::result::Result<Api, String> {
                $(
                    let $name = *unsafe {
                        lib.get::<unsafe extern "C" fn($($arg),*) $(-> $ret)?>(concat!(stringify!($name), "\0").as_bytes())
                    }
                    .map_err(|e| format!("{}: {e}", stringify!($name)))?;
                )*
                Ok(Api { path, $($name,)* _lib: lib })
            }
        }
    };
}

api! {
    XGBGetLastError: fn() -> *const c_char;
    XGBoostVersion: fn(*mut c_int, *mut c_int, *mut c_int);
    XGBRegisterLogCallback: fn(extern "C" fn(*const c_char)) -> c_int;
    XGDMatrixCreateFromColumnar: fn(*const c_char, *const c_char, *mut Handle) -> c_int;
    XGDMatrixSetInfoFromInterface: fn(Handle, *const c_char, *const c_char) -> c_int;
    XGDMatrixSetStrFeatureInfo: fn(Handle, *const c_char, *const *const c_char, BstUlong) -> c_int;
    XGDMatrixNumCol: fn(Handle, *mut BstUlong) -> c_int;
    XGDMatrixFree: fn(Handle) -> c_int;
    XGBoosterCreate: fn(*const Handle, BstUlong, *mut Handle) -> c_int;
    XGBoosterFree: fn(Handle) -> c_int;
    XGBoosterSetParam: fn(Handle, *const c_char, *const c_char) -> c_int;
    XGBoosterUpdateOneIter: fn(Handle, c_int, Handle) -> c_int;
    XGBoosterEvalOneIter: fn(Handle, c_int, *mut Handle, *const *const c_char, BstUlong, *mut *const c_char) -> c_int;
    XGBoosterPredictFromDMatrix: fn(Handle, Handle, *const c_char, *mut *const BstUlong, *mut BstUlong, *mut *const f32) -> c_int;
    XGBoosterPredictFromDense: fn(Handle, *const c_char, *const c_char, Handle, *mut *const BstUlong, *mut BstUlong, *mut *const f32) -> c_int;
    XGBoosterSaveModelToBuffer: fn(Handle, *const c_char, *mut BstUlong, *mut *const c_char) -> c_int;
    XGBoosterLoadModelFromBuffer: fn(Handle, *const c_void, BstUlong) -> c_int;
    XGBoosterBoostedRounds: fn(Handle, *mut c_int) -> c_int;
    XGBoosterGetNumFeature: fn(Handle, *mut BstUlong) -> c_int;
    XGBoosterSetStrFeatureInfo: fn(Handle, *const c_char, *const *const c_char, BstUlong) -> c_int;
    XGBoosterGetStrFeatureInfo: fn(Handle, *const c_char, *mut BstUlong, *mut *const *const c_char) -> c_int;
    XGBoosterSetAttr: fn(Handle, *const c_char, *const c_char) -> c_int;
    XGBoosterGetAttr: fn(Handle, *const c_char, *mut *const c_char, *mut c_int) -> c_int;
    XGBoosterDumpModelEx: fn(Handle, *const c_char, c_int, *const c_char, *mut BstUlong, *mut *const *const c_char) -> c_int;
    XGTrackerCreate: fn(*const c_char, *mut Handle) -> c_int;
    XGTrackerWorkerArgs: fn(Handle, *mut *const c_char) -> c_int;
    XGTrackerRun: fn(Handle, *const c_char) -> c_int;
    XGTrackerWaitFor: fn(Handle, *const c_char) -> c_int;
    XGTrackerFree: fn(Handle) -> c_int;
    XGCommunicatorInit: fn(*const c_char) -> c_int;
    XGCommunicatorFinalize: fn() -> c_int;
    XGCommunicatorGetRank: fn() -> c_int;
    XGCommunicatorGetWorldSize: fn() -> c_int;
}

// SAFETY: the struct holds plain function pointers into a library that is
// never unloaded; XGBoost's C API may be called from any thread.
unsafe impl Send for Api {}
// SAFETY: as above; the pointers are read-only after loading.
unsafe impl Sync for Api {}

static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();

/// The folders the project's set-up scripts keep downloads in, in the order
/// `scripts/cache-dir.sh` tries them: `$RAYFORGE_CACHE`,
/// `$XDG_CACHE_HOME/rayforge`, `~/.cache/rayforge`.
pub fn cache_dirs() -> Vec<PathBuf> {
    let mut caches = Vec::new();
    if let Some(d) = std::env::var_os("RAYFORGE_CACHE") {
        caches.push(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        caches.push(PathBuf::from(d).join("rayforge"));
    }
    if let Some(d) = std::env::var_os("HOME") {
        caches.push(PathBuf::from(d).join(".cache/rayforge"));
    }
    caches
}

/// Where the library is looked for, in order.
fn candidates() -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(p) = std::env::var_os("RAYFORGE_XGBOOST_LIB") {
        c.push(PathBuf::from(p));
    }
    for d in cache_dirs() {
        c.push(d.join(format!("xgboost-{XGBOOST_VERSION}/xgboost/lib/libxgboost.so")));
    }
    c
}

fn load() -> std::result::Result<Api, String> {
    let tried = candidates();
    let Some(path) = tried.iter().find(|p| p.is_file()) else {
        let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
        return Err(format!(
            "libxgboost.so not found (looked at: {}); run `source scripts/xgboost.sh`, which sets it up from \
             PyPI's xgboost-cpu {XGBOOST_VERSION} wheel and exports RAYFORGE_XGBOOST_LIB",
            if list.is_empty() {
                "nothing".to_string()
            } else {
                list.join(", ")
            }
        ));
    };
    // SAFETY: loading runs the library's initializers; libxgboost's are
    // those of a C++ library with no preconditions on the process.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: the file is XGBoost's library (named so, in the place the
    // set-up script puts it); the signatures are c_api.h's.
    unsafe { Api::resolve(lib, path.clone()) }
        .map_err(|e| format!("{} lacks a function of XGBoost 3.x's C API ({e})", path.display()))
}

thread_local! {
    /// Whether this thread's XGBoost log goes to [`forward_log`].
    static LOGGING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The loaded library (loaded on first use), with XGBoost's log on this
/// thread sent to [`forward_log`] (XGBoost keeps log callbacks per thread).
pub(crate) fn api() -> Result<&'static Api> {
    let api = API.get_or_init(load).as_ref().map_err(|e| Error::Library(e.clone()))?;
    if !LOGGING.get() {
        LOGGING.set(true);
        // SAFETY: `forward_log` is a plain `extern "C"` function living as
        // long as the process.
        unsafe { (api.XGBRegisterLogCallback)(forward_log) };
    }
    Ok(api)
}

/// The path the library was loaded from and its version, or why it could
/// not be loaded.
pub(crate) fn library() -> Result<(PathBuf, String)> {
    let api = api()?;
    let (mut major, mut minor, mut patch) = (0, 0, 0);
    // SAFETY: three valid out-pointers.
    unsafe { (api.XGBoostVersion)(&mut major, &mut minor, &mut patch) };
    Ok((api.path.clone(), format!("{major}.{minor}.{patch}")))
}

/// Turns a C API return code into a result, with XGBoost's message.
pub(crate) fn check(api: &Api, rc: c_int) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: XGBGetLastError returns a NUL-terminated thread-local string.
    let msg = unsafe { CStr::from_ptr((api.XGBGetLastError)()) };
    Err(Error::XGBoost(clean(&msg.to_string_lossy())))
}

/// XGBoost's messages start with `[time] file:line: `; the rest is what
/// says what went wrong.
fn clean(msg: &str) -> String {
    let first = msg.trim();
    let body = match (first.starts_with('['), first.find(": ")) {
        (true, Some(i)) if first[..i].contains(".cc:") => &first[i + 2..],
        _ => first,
    };
    // The stack trace XGBoost appends adds nothing for a user.
    body.split("\nStack trace:").next().unwrap_or(body).trim().to_string()
}

/// A Rust string as a C string; a NUL inside is an invalid argument.
pub(crate) fn cstr(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidArgument(format!("{what} `{s}` contains a NUL byte")))
}

thread_local! {
    /// What XGBoost logged on this thread since the last [`take_log`].
    static LOG: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// XGBoost's log messages: kept for [`take_log`] (so a caller can turn a
/// warning into an error) and passed on to `tracing`.
extern "C" fn forward_log(msg: *const c_char) {
    if msg.is_null() {
        return;
    }
    // SAFETY: XGBoost passes a NUL-terminated message valid for the call.
    let text = unsafe { CStr::from_ptr(msg) }.to_string_lossy().trim().to_string();
    tracing::info!(target: "xgboost", "{text}");
    // A panic must not unwind into C: `try_with` fails quietly during
    // thread teardown, and the borrow is never held across a call.
    let _ = LOG.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            if l.len() < 1000 {
                l.push(text);
            }
        }
    });
}

/// The messages XGBoost logged on this thread since the last call.
pub(crate) fn take_log() -> Vec<String> {
    LOG.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_lose_their_location_and_stack_trace() {
        assert_eq!(
            clean(
                "[10:31:02] /workspace/src/learner.cc:752: Invalid parameter \"max_depth\"\nStack trace:\n  [bt] (0)"
            ),
            "Invalid parameter \"max_depth\""
        );
        assert_eq!(clean("plain"), "plain");
    }
}
