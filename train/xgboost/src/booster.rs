//! [`Booster`]: an XGBoost model, trained round by round, evaluated,
//! saved and loaded (UBJSON, XGBoost's own format), and predicting.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, CStr};

use serde_json::Value;

use crate::dmatrix::{DMatrix, DataSpec};
use crate::error::{Error, Result};
use crate::ffi::{api, check, cstr, take_log, BstUlong, Handle};

/// XGBoost's parameters by name, as its Python `params` dict: strings,
/// numbers and booleans; a list gives a parameter several values (as
/// `eval_metric = ["rmse", "mae"]`).
pub type Params = serde_json::Map<String, Value>;

/// An XGBoost model.
pub struct Booster {
    handle: Handle,
}

// SAFETY: a booster handle is not tied to the thread that made it; the
// type is not Sync, so it is used from one thread at a time.
unsafe impl Send for Booster {}

impl std::fmt::Debug for Booster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Booster")
            .field("rounds", &self.boosted_rounds().ok())
            .finish()
    }
}

impl Drop for Booster {
    fn drop(&mut self) {
        if let Ok(api) = api() {
            // SAFETY: the handle came from XGBoosterCreate and is freed once.
            unsafe { (api.XGBoosterFree)(self.handle) };
        }
    }
}

/// The string XGBoost is given for a parameter's value.
fn param_values(name: &str, v: &Value) -> Result<Vec<String>> {
    let bad = |what: &str| Error::Param {
        name: name.to_string(),
        message: format!("{what} is not a parameter value (give a string, number, boolean or a list of them)"),
    };
    Ok(match v {
        Value::String(s) => vec![s.clone()],
        Value::Number(n) => vec![n.to_string()],
        Value::Bool(b) => vec![b.to_string()],
        Value::Array(items) => {
            let mut out = Vec::new();
            for i in items {
                if matches!(i, Value::Array(_)) {
                    return Err(bad("a nested list"));
                }
                out.extend(param_values(name, i)?);
            }
            out
        }
        Value::Null => return Err(bad("null")),
        Value::Object(_) => return Err(bad("a table")),
    })
}

/// Names the parameter an XGBoost error is about, when it names one of
/// `params`.
fn about_param(e: Error, params: &Params) -> Error {
    match e {
        Error::XGBoost(message) => {
            let mut names: Vec<&String> = params.keys().collect();
            // The longest first: `max_depth` before `depth`.
            names.sort_by_key(|n| std::cmp::Reverse(n.len()));
            match names.into_iter().find(|n| message.contains(n.as_str())) {
                Some(name) => Error::Param {
                    name: name.clone(),
                    message,
                },
                None => Error::XGBoost(message),
            }
        }
        other => other,
    }
}

impl Booster {
    /// A new model on `cache` (the matrices it trains and evaluates on),
    /// with `params`. Parameters are checked when the model is first
    /// configured (its first round): one XGBoost does not use is an error
    /// naming it (see [`Booster::update`]).
    pub fn new(cache: &[&DMatrix], params: &Params) -> Result<Booster> {
        let api = api()?;
        let handles: Vec<Handle> = cache.iter().map(|d| d.handle).collect();
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: `handles` are live DMatrix handles; XGBoost keeps its own
        // references to them.
        check(api, unsafe {
            (api.XGBoosterCreate)(handles.as_ptr(), handles.len() as BstUlong, &mut handle)
        })?;
        let mut b = Booster { handle };
        // The model keeps its features' names (saved with it, and what batch
        // prediction picks columns by), as Python's xgboost.train does.
        if let Some(first) = cache.first() {
            b.set_feature_names(first.feature_names())?;
        }
        // XGBoost then warns about parameters it does not use (see update).
        b.set_param("validate_parameters", "true")?;
        for (name, v) in params {
            for value in param_values(name, v)? {
                b.set_param(name, &value).map_err(|e| about_param(e, params))?;
            }
        }
        Ok(b)
    }

    /// A model loaded from `bytes` (UBJSON or JSON, as [`Booster::save`]
    /// writes).
    pub fn load(bytes: &[u8]) -> Result<Booster> {
        let b = Booster::new(&[], &Params::new())?;
        b.load_into(bytes)?;
        Ok(b)
    }

    fn load_into(&self, bytes: &[u8]) -> Result<()> {
        let api = api()?;
        // SAFETY: `bytes` is valid for its length during the call; XGBoost
        // parses it into the model.
        check(api, unsafe {
            (api.XGBoosterLoadModelFromBuffer)(self.handle, bytes.as_ptr().cast(), bytes.len() as BstUlong)
        })
    }

    /// Replaces this model's trees and parameters with those of `bytes`
    /// (to resume boosting from a checkpoint).
    pub fn load_model(&mut self, bytes: &[u8]) -> Result<()> {
        self.load_into(bytes)
    }

    /// Sets one parameter.
    pub fn set_param(&mut self, name: &str, value: &str) -> Result<()> {
        let api = api()?;
        let (n, v) = (cstr("parameter", name)?, cstr("value", value)?);
        // SAFETY: a live handle and two NUL-terminated strings.
        check(api, unsafe {
            (api.XGBoosterSetParam)(self.handle, n.as_ptr(), v.as_ptr())
        })
    }

    /// Boosts one round (`round` counts from 0 over the model's life) on
    /// `dtrain`. In the first, XGBoost configures the model: a parameter it
    /// refuses, or one it does not use (misspelt, or not one of this
    /// booster's), is [`Error::Param`].
    pub fn update(&mut self, round: usize, dtrain: &DMatrix) -> Result<()> {
        let api = api()?;
        let round = c_int::try_from(round).map_err(|_| Error::InvalidArgument(format!("round {round}")))?;
        take_log();
        // SAFETY: live handles.
        let r = check(api, unsafe {
            (api.XGBoosterUpdateOneIter)(self.handle, round, dtrain.handle)
        });
        let log = take_log();
        r.map_err(|e| match e {
            Error::XGBoost(m) => match param_named_in(&m) {
                Some(name) => Error::Param { name, message: m },
                None => Error::XGBoost(m),
            },
            e => e,
        })?;
        // "Parameters: { "max_dept" } are not used."
        if let Some(line) = log.iter().find(|l| l.contains("are not used")) {
            let names: Vec<&str> = line
                .split('{')
                .nth(1)
                .and_then(|s| s.split('}').next())
                .map(|s| s.split(',').map(|n| n.trim().trim_matches('"')).collect())
                .unwrap_or_default();
            return Err(Error::Param {
                name: names.join(", "),
                message: "XGBoost does not use it (misspelt, or not a parameter of this booster)".into(),
            });
        }
        Ok(())
    }

    /// The metrics of round `round` on each named matrix, as XGBoost names
    /// them: `NAME-METRIC` (`valid-rmse`). In a distributed run they are
    /// over every worker's rows.
    pub fn eval(&self, round: usize, evals: &[(&str, &DMatrix)]) -> Result<BTreeMap<String, f64>> {
        if evals.is_empty() {
            return Ok(BTreeMap::new());
        }
        let api = api()?;
        let round = c_int::try_from(round).map_err(|_| Error::InvalidArgument(format!("round {round}")))?;
        let mut handles: Vec<Handle> = evals.iter().map(|(_, d)| d.handle).collect();
        let names: Vec<std::ffi::CString> = evals
            .iter()
            .map(|(n, _)| cstr("evaluation name", n))
            .collect::<Result<_>>()?;
        let name_ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
        let mut out: *const c_char = std::ptr::null();
        // SAFETY: as many live handles as names; `out` is XGBoost's
        // thread-local string, read before the next call.
        check(api, unsafe {
            (api.XGBoosterEvalOneIter)(
                self.handle,
                round,
                handles.as_mut_ptr(),
                name_ptrs.as_ptr(),
                handles.len() as BstUlong,
                &mut out,
            )
        })?;
        // SAFETY: a NUL-terminated string (see above).
        let text = unsafe { CStr::from_ptr(out) }.to_string_lossy().into_owned();
        Ok(parse_eval(&text))
    }

    /// Predictions for every row of `data` (for multi-class objectives,
    /// each row's class probabilities, row after row).
    pub fn predict(&self, data: &DMatrix) -> Result<Vec<f32>> {
        let api = api()?;
        let config = cstr(
            "config",
            r#"{"type": 0, "training": false, "iteration_begin": 0, "iteration_end": 0, "strict_shape": false}"#,
        )?;
        let mut shape: *const BstUlong = std::ptr::null();
        let mut dim: BstUlong = 0;
        let mut out: *const f32 = std::ptr::null();
        // SAFETY: live handles and valid out-pointers.
        check(api, unsafe {
            (api.XGBoosterPredictFromDMatrix)(
                self.handle,
                data.handle,
                config.as_ptr(),
                &mut shape,
                &mut dim,
                &mut out,
            )
        })?;
        // SAFETY: a successful prediction's outputs.
        Ok(unsafe { predictions(shape, dim, out) })
    }

    /// Predictions for `rows` rows of `cols` features, row after row in
    /// `values` (NaN: missing), without a DMatrix (XGBoost's in-place
    /// prediction, what a server answering small batches wants).
    pub fn predict_dense(&self, values: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
        if rows.checked_mul(cols) != Some(values.len()) {
            return Err(Error::InvalidArgument(format!(
                "{} values are not {rows} rows of {cols} features",
                values.len()
            )));
        }
        let api = api()?;
        let iface = cstr(
            "interface",
            &format!(
                r#"{{"data": [{}, true], "shape": [{rows}, {cols}], "typestr": "<f4", "version": 3, "strides": null}}"#,
                values.as_ptr() as usize
            ),
        )?;
        let config = cstr(
            "config",
            r#"{"type": 0, "training": false, "iteration_begin": 0, "iteration_end": 0, "strict_shape": false, "missing": NaN}"#,
        )?;
        let mut shape: *const BstUlong = std::ptr::null();
        let mut dim: BstUlong = 0;
        let mut out: *const f32 = std::ptr::null();
        // SAFETY: the interface points at `values`, alive for the call; no
        // proxy matrix; valid out-pointers.
        check(api, unsafe {
            (api.XGBoosterPredictFromDense)(
                self.handle,
                iface.as_ptr(),
                config.as_ptr(),
                std::ptr::null_mut(),
                &mut shape,
                &mut dim,
                &mut out,
            )
        })?;
        // SAFETY: a successful prediction's outputs.
        Ok(unsafe { predictions(shape, dim, out) })
    }

    /// Predictions for the rows of Arrow `batches` (the features `spec`
    /// names, or the columns the model was trained on).
    pub fn predict_batches(&self, batches: &[arrow::record_batch::RecordBatch], spec: &DataSpec) -> Result<Vec<f32>> {
        self.predict(&DMatrix::from_batches(batches, spec, "prediction input")?)
    }

    /// The model in XGBoost's UBJSON format (what checkpoints hold and
    /// `xgboost.Booster.load_model` reads).
    pub fn save(&self) -> Result<Vec<u8>> {
        self.save_as("ubj")
    }

    /// The model as XGBoost's JSON.
    pub fn save_json(&self) -> Result<String> {
        String::from_utf8(self.save_as("json")?).map_err(|e| Error::XGBoost(format!("model JSON: {e}")))
    }

    fn save_as(&self, format: &str) -> Result<Vec<u8>> {
        let api = api()?;
        let config = cstr("config", &format!(r#"{{"format": "{format}"}}"#))?;
        let mut len: BstUlong = 0;
        let mut out: *const c_char = std::ptr::null();
        // SAFETY: valid out-pointers; `out` holds `len` bytes owned by the
        // booster until its next call (copied here).
        check(api, unsafe {
            (api.XGBoosterSaveModelToBuffer)(self.handle, config.as_ptr(), &mut len, &mut out)
        })?;
        Ok(unsafe { std::slice::from_raw_parts(out.cast::<u8>(), len as usize) }.to_vec())
    }

    /// Rounds boosted so far (a loaded model's included).
    pub fn boosted_rounds(&self) -> Result<usize> {
        let api = api()?;
        let mut n: c_int = 0;
        // SAFETY: a live handle and a valid out-pointer.
        check(api, unsafe { (api.XGBoosterBoostedRounds)(self.handle, &mut n) })?;
        Ok(n.max(0) as usize)
    }

    /// The number of features the model was trained on.
    pub fn num_features(&self) -> Result<u64> {
        let api = api()?;
        let mut n: BstUlong = 0;
        // SAFETY: a live handle and a valid out-pointer.
        check(api, unsafe { (api.XGBoosterGetNumFeature)(self.handle, &mut n) })?;
        Ok(n)
    }

    fn set_feature_names(&mut self, names: &[String]) -> Result<()> {
        let api = api()?;
        let names: Vec<std::ffi::CString> = names.iter().map(|n| cstr("feature name", n)).collect::<Result<_>>()?;
        let ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
        let field = cstr("field", "feature_name")?;
        // SAFETY: `ptrs` holds `names.len()` NUL-terminated strings alive for
        // the call; XGBoost copies them.
        check(api, unsafe {
            (api.XGBoosterSetStrFeatureInfo)(self.handle, field.as_ptr(), ptrs.as_ptr(), ptrs.len() as BstUlong)
        })
    }

    /// The names of the features the model was trained on (those of its
    /// training matrix's columns; empty when it had none).
    pub fn feature_names(&self) -> Result<Vec<String>> {
        let api = api()?;
        let field = cstr("field", "feature_name")?;
        let mut len: BstUlong = 0;
        let mut out: *const *const c_char = std::ptr::null();
        // SAFETY: valid out-pointers; `out` holds `len` strings owned by the
        // booster until its next call (copied here).
        check(api, unsafe {
            (api.XGBoosterGetStrFeatureInfo)(self.handle, field.as_ptr(), &mut len, &mut out)
        })?;
        if len == 0 || out.is_null() {
            return Ok(Vec::new());
        }
        let names = unsafe { std::slice::from_raw_parts(out, len as usize) };
        Ok(names
            .iter()
            // SAFETY: each a NUL-terminated string (see above).
            .map(|n| unsafe { CStr::from_ptr(*n) }.to_string_lossy().into_owned())
            .collect())
    }

    /// An attribute saved with the model (`best_iteration`, say).
    pub fn attr(&self, key: &str) -> Result<Option<String>> {
        let api = api()?;
        let k = cstr("attribute", key)?;
        let mut out: *const c_char = std::ptr::null();
        let mut found: c_int = 0;
        // SAFETY: valid pointers; `out` is read before the next call.
        check(api, unsafe {
            (api.XGBoosterGetAttr)(self.handle, k.as_ptr(), &mut out, &mut found)
        })?;
        if found == 0 || out.is_null() {
            return Ok(None);
        }
        // SAFETY: a NUL-terminated string (see above).
        Ok(Some(unsafe { CStr::from_ptr(out) }.to_string_lossy().into_owned()))
    }

    /// Sets an attribute saved with the model.
    pub fn set_attr(&mut self, key: &str, value: &str) -> Result<()> {
        let api = api()?;
        let (k, v) = (cstr("attribute", key)?, cstr("value", value)?);
        // SAFETY: a live handle and two NUL-terminated strings.
        check(api, unsafe {
            (api.XGBoosterSetAttr)(self.handle, k.as_ptr(), v.as_ptr())
        })
    }

    /// Each tree as XGBoost's JSON dump (with split gains and covers when
    /// `with_stats`).
    pub fn dump(&self, with_stats: bool) -> Result<Vec<String>> {
        let api = api()?;
        let (fmap, format) = (cstr("fmap", "")?, cstr("format", "json")?);
        let mut len: BstUlong = 0;
        let mut out: *const *const c_char = std::ptr::null();
        // SAFETY: valid pointers; `out` holds `len` strings owned by the
        // booster until its next call (copied here).
        check(api, unsafe {
            (api.XGBoosterDumpModelEx)(
                self.handle,
                fmap.as_ptr(),
                c_int::from(with_stats),
                format.as_ptr(),
                &mut len,
                &mut out,
            )
        })?;
        let trees = unsafe { std::slice::from_raw_parts(out, len as usize) };
        Ok(trees
            .iter()
            // SAFETY: each a NUL-terminated string (see above).
            .map(|t| unsafe { CStr::from_ptr(*t) }.to_string_lossy().into_owned())
            .collect())
    }
}

/// A prediction's output copied out of the booster.
///
/// # Safety
/// `shape` holds `dim` sizes and `out` their product of floats, as a
/// successful `XGBoosterPredictFrom*` call leaves them (owned by the booster
/// until its next call).
unsafe fn predictions(shape: *const BstUlong, dim: BstUlong, out: *const f32) -> Vec<f32> {
    let dims = unsafe { std::slice::from_raw_parts(shape, dim as usize) };
    let n: u64 = dims.iter().product();
    unsafe { std::slice::from_raw_parts(out, n as usize) }.to_vec()
}

/// The parameter an XGBoost error names, from the forms its messages take
/// (`... for Parameter max_depth ...`, `Invalid Parameter format for
/// max_depth ...`, `Unknown objective function: ...`).
fn param_named_in(message: &str) -> Option<String> {
    for marker in ["for Parameter ", "Parameter format for ", "parameter "] {
        if let Some(i) = message.find(marker) {
            let rest = &message[i + marker.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                return Some(name);
            }
        }
    }
    if message.contains("Unknown objective") {
        return Some("objective".into());
    }
    if message.contains("Unknown metric") {
        return Some("eval_metric".into());
    }
    None
}

/// `[3]\ttrain-rmse:0.25\tvalid-rmse:0.31` as metrics by name.
fn parse_eval(text: &str) -> BTreeMap<String, f64> {
    text.split('\t')
        .skip(1)
        .filter_map(|part| {
            let (name, value) = part.trim().rsplit_once(':')?;
            Some((name.to_string(), value.parse::<f64>().ok()?))
        })
        .collect()
}

/// Trains a model in this process, as `xgboost.train`: `rounds` rounds on
/// `dtrain`, the metrics of `evals` after each (given to `on_round`).
pub fn train(
    params: &Params,
    dtrain: &DMatrix,
    rounds: usize,
    evals: &[(&str, &DMatrix)],
    mut on_round: impl FnMut(usize, &BTreeMap<String, f64>),
) -> Result<Booster> {
    let mut cache: Vec<&DMatrix> = vec![dtrain];
    cache.extend(evals.iter().map(|(_, d)| *d));
    let mut b = Booster::new(&cache, params)?;
    for round in 0..rounds {
        b.update(round, dtrain)?;
        let m = b.eval(round, evals)?;
        on_round(round, &m);
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_lines_become_metrics() {
        let m = parse_eval("[3]\ttrain-rmse:0.25\tvalid-rmse:0.5\tvalid-mae:1e-3");
        assert_eq!(m.len(), 3);
        assert_eq!(m["train-rmse"], 0.25);
        assert_eq!(m["valid-mae"], 0.001);
        assert!(parse_eval("[0]").is_empty());
    }

    #[test]
    fn parameter_names_are_found_in_xgboost_messages() {
        assert_eq!(
            param_named_in("value -1 for Parameter max_depth should be greater equal to 0").as_deref(),
            Some("max_depth")
        );
        assert_eq!(
            param_named_in("Unknown objective function: `reg:nope`").as_deref(),
            Some("objective")
        );
        assert_eq!(param_named_in("something else"), None);
    }

    #[test]
    fn parameter_values_become_strings() {
        assert_eq!(param_values("eta", &serde_json::json!(0.3)).unwrap(), ["0.3"]);
        assert_eq!(
            param_values("eval_metric", &serde_json::json!(["rmse", "mae"])).unwrap(),
            ["rmse", "mae"]
        );
        let e = param_values("eta", &serde_json::json!({"a": 1})).unwrap_err();
        assert!(matches!(e, Error::Param { ref name, .. } if name == "eta"), "{e}");
    }
}
