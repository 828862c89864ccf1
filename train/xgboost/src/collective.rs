//! XGBoost's own collective: the tracker that bootstraps the workers'
//! connections (run by rank 0) and the communicator each worker joins, as
//! `xgboost.collective` and xgboost-ray do. Histograms, quantile sketches
//! and metrics are all-reduced through it inside XGBoost's training.

use std::ffi::c_char;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::ffi::{api, check, cstr, Handle};

/// A running tracker for `n` workers.
pub struct Tracker {
    handle: Handle,
    waited: bool,
}

// SAFETY: the tracker runs on its own thread inside XGBoost; its handle
// may be passed between threads.
unsafe impl Send for Tracker {}

impl Tracker {
    /// Starts a tracker for `workers` workers, listening on `host` (an
    /// address the workers reach) at a port the system picks.
    pub fn start(workers: usize, host: &str, timeout: Duration) -> Result<Tracker> {
        let api = api()?;
        let config = serde_json::json!({
            "dmlc_communicator": "rabit",
            "n_workers": workers,
            "host": host,
            "port": 0,
            "timeout": timeout.as_secs().max(1),
            // Ranks by task id: XGBoost's rank i is the gang's rank i.
            "sortby": 1,
        });
        let config = cstr("tracker config", &config.to_string())?;
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: a NUL-terminated config and a valid out-pointer.
        check(api, unsafe { (api.XGTrackerCreate)(config.as_ptr(), &mut handle) })?;
        let t = Tracker { handle, waited: false };
        let empty = cstr("config", "{}")?;
        // SAFETY: a live tracker handle.
        check(api, unsafe { (api.XGTrackerRun)(t.handle, empty.as_ptr()) })?;
        Ok(t)
    }

    /// What workers give [`Communicator::join`]: the tracker's address.
    pub fn worker_args(&self) -> Result<serde_json::Value> {
        let api = api()?;
        let mut out: *const c_char = std::ptr::null();
        // SAFETY: a live tracker handle; `out` is read before the next call.
        check(api, unsafe { (api.XGTrackerWorkerArgs)(self.handle, &mut out) })?;
        // SAFETY: a NUL-terminated JSON document (see above).
        let text = unsafe { std::ffi::CStr::from_ptr(out) }.to_string_lossy().into_owned();
        serde_json::from_str(&text).map_err(|e| Error::XGBoost(format!("tracker arguments `{text}`: {e}")))
    }

    /// Waits until every worker has finalized its communicator.
    pub fn wait(mut self) -> Result<()> {
        let api = api()?;
        let empty = cstr("config", "{}")?;
        self.waited = true;
        // SAFETY: a live, running tracker handle.
        check(api, unsafe { (api.XGTrackerWaitFor)(self.handle, empty.as_ptr()) })
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if let Ok(api) = api() {
            if !self.waited {
                tracing::debug!("closing an XGBoost tracker its workers did not finish with");
            }
            // SAFETY: the handle came from XGTrackerCreate and is freed once.
            unsafe { (api.XGTrackerFree)(self.handle) };
        }
    }
}

/// This thread's membership of a group of XGBoost workers: XGBoost calls
/// made on this thread while it lives are collective across the group.
/// Finalized when dropped.
pub struct Communicator {
    // XGBoost keeps the communicator per thread: not Send.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Communicator {
    /// Joins the tracker of `args` ([`Tracker::worker_args`]) as `rank`,
    /// waiting up to `timeout` for each network operation.
    pub fn join(args: &serde_json::Value, rank: usize, timeout: Duration) -> Result<Communicator> {
        let api = api()?;
        let mut config = match args {
            serde_json::Value::Object(m) => m.clone(),
            other => return Err(Error::XGBoost(format!("tracker arguments are not an object: {other}"))),
        };
        config.insert("dmlc_communicator".into(), "rabit".into());
        config.insert("dmlc_task_id".into(), rank.to_string().into());
        config.insert("dmlc_timeout".into(), timeout.as_secs().max(1).into());
        config.insert("dmlc_retry".into(), 3.into());
        let config = cstr("communicator config", &serde_json::Value::Object(config).to_string())?;
        // SAFETY: a NUL-terminated config.
        check(api, unsafe { (api.XGCommunicatorInit)(config.as_ptr()) })?;
        Ok(Communicator {
            _not_send: std::marker::PhantomData,
        })
    }

    /// This worker's rank in XGBoost's group.
    pub fn rank(&self) -> Result<usize> {
        let api = api()?;
        // SAFETY: no arguments; the communicator is initialized.
        Ok(unsafe { (api.XGCommunicatorGetRank)() }.max(0) as usize)
    }

    /// The number of workers.
    pub fn world_size(&self) -> Result<usize> {
        let api = api()?;
        // SAFETY: no arguments; the communicator is initialized.
        Ok(unsafe { (api.XGCommunicatorGetWorldSize)() }.max(0) as usize)
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        if let Ok(api) = api() {
            // SAFETY: this thread's communicator was initialized by join.
            if unsafe { (api.XGCommunicatorFinalize)() } != 0 {
                tracing::warn!("finalizing XGBoost's communicator failed");
            }
        }
    }
}
