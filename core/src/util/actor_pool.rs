//! Spreading work over a fixed set of actors.

use std::collections::VecDeque;
use std::time::Duration;

use crate::{wait, Error, ObjectRef, Result, Value};

/// Runs work on a fixed set of actors, each busy with at most one item at a
/// time, like Ray's `ActorPool`.
///
/// ```no_run
/// #[rayforge::actor]
/// struct Doubler;
///
/// #[rayforge::actor]
/// impl Doubler {
///     fn new() -> Self {
///         Doubler
///     }
///     fn double(&self, x: i64) -> i64 {
///         2 * x
///     }
/// }
///
/// fn main() -> rayforge::Result<()> {
///     rayforge::init(rayforge::Config::default())?;
///     let pool = rayforge::util::ActorPool::new(vec![Doubler::remote()?, Doubler::remote()?]);
///     assert_eq!(pool.map(|a, v| a.double(v), vec![1i64, 2, 3])?, vec![2, 4, 6]);
///     Ok(())
/// }
/// ```
pub struct ActorPool<H> {
    actors: Vec<H>,
}

impl<H> ActorPool<H> {
    /// A pool over these actors.
    pub fn new(actors: Vec<H>) -> ActorPool<H> {
        ActorPool { actors }
    }

    /// The actors.
    pub fn actors(&self) -> &[H] {
        &self.actors
    }

    /// Runs `f(actor, value)` for every value; results in input order. When
    /// calls fail, the error is that of the first failing input in input
    /// order (as Ray's ordered `map`), whatever order they failed in.
    pub fn map<V, R: Value>(
        &self,
        f: impl Fn(&H, V) -> ObjectRef<R>,
        values: impl IntoIterator<Item = V>,
    ) -> Result<Vec<R>> {
        let mut out: Vec<Option<R>> = Vec::new();
        for (i, r) in self.run(f, values, true)? {
            if out.len() <= i {
                out.resize_with(i + 1, || None);
            }
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.ok_or_else(|| Error::Internal("actor pool lost a result".into())))
            .collect()
    }

    /// Runs `f(actor, value)` for every value; results in completion order.
    /// The first call to fail ends the run with its error.
    pub fn map_unordered<V, R: Value>(
        &self,
        f: impl Fn(&H, V) -> ObjectRef<R>,
        values: impl IntoIterator<Item = V>,
    ) -> Result<Vec<R>> {
        Ok(self.run(f, values, false)?.into_iter().map(|(_, r)| r).collect())
    }

    /// Runs every value through the pool; returns `(input index, result)`
    /// pairs in completion order. Unordered, the first failure to complete
    /// ends the run; ordered, a failure ends it once every earlier input has
    /// completed, with the earliest input's error.
    fn run<V, R: Value>(
        &self,
        f: impl Fn(&H, V) -> ObjectRef<R>,
        values: impl IntoIterator<Item = V>,
        ordered: bool,
    ) -> Result<Vec<(usize, R)>> {
        if self.actors.is_empty() {
            return Err(Error::InvalidArgument("ActorPool has no actors".into()));
        }
        let mut values = values.into_iter().enumerate();
        let mut idle: VecDeque<usize> = (0..self.actors.len()).collect();
        let mut busy: Vec<(ObjectRef<R>, usize, usize)> = Vec::new(); // (ref, actor, input index)
        let mut out = Vec::new();
        // The earliest failed input so far, and its error.
        let mut failed: Option<(usize, Error)> = None;
        loop {
            // Ordered, wait until every input before the failed one is done.
            let done = matches!(&failed, Some((i, _)) if !ordered || busy.iter().all(|b| b.2 > *i));
            if done {
                if let Some((_, e)) = failed.take() {
                    return Err(e);
                }
            }
            while let Some(a) = idle.front().copied() {
                if failed.is_some() {
                    break; // no new work once a call has failed
                }
                let Some((i, v)) = values.next() else { break };
                idle.pop_front();
                busy.push((f(&self.actors[a], v), a, i));
            }
            if busy.is_empty() {
                return Ok(out);
            }
            let refs: Vec<ObjectRef<R>> = busy.iter().map(|b| b.0.clone()).collect();
            let (ready, _) = wait(&refs, 1, Some(Duration::from_secs(3600)))?;
            for r in ready {
                if let Some(pos) = busy.iter().position(|b| b.0 == r) {
                    let (r, a, i) = busy.swap_remove(pos);
                    idle.push_back(a);
                    match r.get() {
                        Ok(v) => out.push((i, v)),
                        Err(e) => {
                            if failed.as_ref().is_none_or(|(j, _)| i < *j) {
                                failed = Some((i, e));
                            }
                        }
                    }
                }
            }
        }
    }
}
