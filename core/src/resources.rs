//! Resources as the scheduler counts them (name -> amount), and how a
//! placement group's bundles rename what runs inside them: a task of group
//! `g` asking for `CPU` asks for `CPU_group_g` (any bundle) or
//! `CPU_group_<i>_g` (bundle `i`), which only the group's reserved bundles
//! offer. Shared by the node's scheduler and the processes that submit.

use std::collections::BTreeMap;

/// Resource amounts by name ("CPU", "GPU", "memory", custom names).
pub(crate) type Resources = BTreeMap<String, f64>;

/// The resource a task or actor of placement group `group` asks for instead
/// of `name` (in bundle `index`, or in any of its bundles).
pub(crate) fn group_resource(name: &str, group: &str, index: Option<u32>) -> String {
    match index {
        Some(i) => format!("{name}_group_{i}_{group}"),
        None => format!("{name}_group_{group}"),
    }
}

/// The placement group a resource name belongs to, if any.
pub(crate) fn group_of(resource: &str) -> Option<&str> {
    let (head, group) = resource.rsplit_once('_')?;
    (head.contains("_group") && group.len() == 16 && group.chars().all(|c| c.is_ascii_hexdigit())).then_some(group)
}

/// The bundle index a placement-group resource name asks for (`None`:
/// any bundle of its group, or not a group resource).
pub(crate) fn bundle_index_of(resource: &str) -> Option<u32> {
    let group = group_of(resource)?;
    let head = resource.strip_suffix(group)?.strip_suffix('_')?;
    let (_, idx) = head.rsplit_once("_group_")?;
    idx.parse().ok()
}

/// Every bundle offers this much of `bundle` so that tasks asking for
/// nothing else still land in it.
pub(crate) const BUNDLE_MARKER: f64 = 1000.0;
