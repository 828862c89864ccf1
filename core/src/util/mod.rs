//! Utilities users reach for on top of tasks and actors: a
//! multiprocessing-style [`Pool`], an [`ActorPool`] and a distributed
//! [`Queue`].

mod actor_pool;
mod pool;
mod queue;

pub use actor_pool::ActorPool;
pub use pool::Pool;
pub use queue::Queue;

/// A Prometheus label value escaped for the text format (`\` `"` and
/// newlines, which `prometheus-client` writes as they are): what every
/// `/metrics` endpoint of the project passes for values that a user chose
/// (actor, task and deployment names), so none can break the exposition or
/// forge a series.
///
/// ```
/// assert_eq!(rayforge::util::prometheus_label(r#"a"b\c"#), r#"a\"b\\c"#);
/// assert_eq!(rayforge::util::prometheus_label("x\ny"), "x\\ny");
/// ```
pub fn prometheus_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}
