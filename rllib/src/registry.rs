//! Names for a user's functions — environment creators, custom models — in
//! this process, and published to the cluster's key-value store so that
//! other processes of the same binary (Tune's trials, which build their own
//! algorithms) find them by name. The functions travel as
//! [`rayforge::FnRef`]s: every process runs the driver's binary.

use std::collections::BTreeMap;
use std::sync::RwLock;

use rayforge::FnRef;

/// The cluster key-value namespace where registered functions are
/// published, under `KIND/NAME`.
const KV_NAMESPACE: &str = "rllib";

/// Registered functions of one kind (`env`, `model`).
pub(crate) struct Registry<F: 'static> {
    kind: &'static str,
    map: RwLock<BTreeMap<String, FnRef<F>>>,
}

impl<F: rayforge::FnPtr> Registry<F> {
    pub(crate) const fn new(kind: &'static str) -> Registry<F> {
        Registry {
            kind,
            map: RwLock::new(BTreeMap::new()),
        }
    }

    /// Registers `f` under `name` here, and in the cluster when this
    /// process has joined one. A name already taken is refused.
    pub(crate) fn register(&self, name: &str, f: F) -> Result<(), String> {
        let f = FnRef::new(f);
        {
            let mut m = self.map.write().unwrap_or_else(|e| e.into_inner());
            if m.contains_key(name) {
                return Err(format!("`{name}` is already registered"));
            }
            m.insert(name.to_string(), f);
        }
        if rayforge::is_initialized() {
            self.publish(name, &f)?;
        }
        Ok(())
    }

    fn publish(&self, name: &str, f: &FnRef<F>) -> Result<(), String> {
        let bytes = serde_json::to_vec(f).map_err(|e| format!("`{name}`: {e}"))?;
        rayforge::kv::put(KV_NAMESPACE, &format!("{}/{name}", self.kind), &bytes, true)
            .map_err(|e| format!("publishing `{name}` to the cluster: {e}"))?;
        Ok(())
    }

    /// Publishes everything registered here (for what was registered
    /// before `rayforge::init`).
    pub(crate) fn publish_all(&self) -> Result<(), String> {
        let all: Vec<(String, FnRef<F>)> = {
            let m = self.map.read().unwrap_or_else(|e| e.into_inner());
            m.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        for (name, f) in all {
            self.publish(&name, &f)?;
        }
        Ok(())
    }

    /// This process's function of that name, else one another process of
    /// the program published to the cluster.
    pub(crate) fn get(&self, name: &str) -> Option<FnRef<F>> {
        if let Some(f) = self.map.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Some(*f);
        }
        if !rayforge::is_initialized() {
            return None;
        }
        let bytes = rayforge::kv::get(KV_NAMESPACE, &format!("{}/{name}", self.kind)).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// The names registered here.
    pub(crate) fn names(&self) -> Vec<String> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}
