//! A multiprocessing-style pool over remote tasks.

use std::collections::VecDeque;
use std::time::Duration;

use crate::{wait, ObjectRef, Result, Value};

/// Maps a remote function over many inputs with at most `processes` tasks in
/// flight, like Python's `multiprocessing.Pool`.
///
/// ```no_run
/// #[rayforge::remote]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// fn main() -> rayforge::Result<()> {
///     rayforge::init(rayforge::Config::default())?;
///     let pool = rayforge::util::Pool::new(4);
///     let out = pool.map(square::remote, 0..10u64)?;
///     assert_eq!(out[3], 9);
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Pool {
    processes: usize,
}

impl Pool {
    /// A pool running at most `processes` tasks at once (at least 1).
    pub fn new(processes: usize) -> Pool {
        Pool {
            processes: processes.max(1),
        }
    }

    /// Applies `submit` to every input and returns the results in input order.
    pub fn map<A, R: Value>(
        &self,
        submit: impl Fn(A) -> ObjectRef<R>,
        inputs: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>> {
        let mut inputs = inputs.into_iter();
        let mut inflight: VecDeque<ObjectRef<R>> = VecDeque::new();
        let mut out = Vec::new();
        loop {
            while inflight.len() < self.processes {
                match inputs.next() {
                    Some(a) => inflight.push_back(submit(a)),
                    None => break,
                }
            }
            match inflight.pop_front() {
                Some(r) => out.push(r.get()?),
                None => return Ok(out),
            }
        }
    }

    /// Applies `submit` to every input; yields results as they finish.
    pub fn imap_unordered<A, R: Value, I: Iterator<Item = A>, F: Fn(A) -> ObjectRef<R>>(
        &self,
        submit: F,
        inputs: impl IntoIterator<Item = A, IntoIter = I>,
    ) -> ImapUnordered<A, R, I, F> {
        ImapUnordered {
            processes: self.processes,
            inputs: inputs.into_iter(),
            submit,
            inflight: Vec::new(),
        }
    }
}

/// Iterator returned by [`Pool::imap_unordered`].
pub struct ImapUnordered<A, R, I: Iterator<Item = A>, F: Fn(A) -> ObjectRef<R>> {
    processes: usize,
    inputs: I,
    submit: F,
    inflight: Vec<ObjectRef<R>>,
}

impl<A, R: Value, I: Iterator<Item = A>, F: Fn(A) -> ObjectRef<R>> Iterator for ImapUnordered<A, R, I, F> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        while self.inflight.len() < self.processes {
            match self.inputs.next() {
                Some(a) => self.inflight.push((self.submit)(a)),
                None => break,
            }
        }
        if self.inflight.is_empty() {
            return None;
        }
        loop {
            match wait(&self.inflight, 1, Some(Duration::from_secs(3600))) {
                Ok((ready, _)) => {
                    if let Some(r) = ready.into_iter().next() {
                        self.inflight.retain(|x| *x != r);
                        return Some(r.get());
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
