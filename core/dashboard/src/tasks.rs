//! `/api/v0/tasks`: counts by name and state, one page of the list
//! (newest first, filtered by state and name), and why each waiting task
//! waits.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use rayforge::state::TaskInfo;
use serde::{Deserialize, Serialize};

use crate::{ApiError, ApiResult, Dash};

/// Most tasks one page holds.
const MAX_PER_PAGE: usize = 1000;

#[derive(Deserialize)]
pub(crate) struct TasksQuery {
    page: Option<usize>,
    per_page: Option<usize>,
    state: Option<String>,
    name: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Count {
    name: String,
    state: String,
    count: usize,
}

#[derive(Debug, Serialize)]
pub(crate) struct TasksPage {
    /// Tasks matching the filters.
    total: usize,
    page: usize,
    per_page: usize,
    pages: usize,
    /// Every task's (name, state) count, filters aside.
    counts: Vec<Count>,
    items: Vec<TaskInfo>,
    /// Nodes that did not answer.
    unreachable: Vec<String>,
}

pub(crate) async fn tasks(State(d): State<Arc<Dash>>, Query(q): Query<TasksQuery>) -> ApiResult<TasksPage> {
    let per_page = q.per_page.unwrap_or(100);
    if per_page == 0 || per_page > MAX_PER_PAGE {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("per_page must be 1 to {MAX_PER_PAGE}, got {per_page}"),
        ));
    }
    let page = q.page.unwrap_or(1);
    if page == 0 {
        return Err(ApiError(StatusCode::BAD_REQUEST, "page counts from 1".into()));
    }
    let listing = d.head(|h| h.tasks()).await?;
    Ok(Json(paginate(
        listing.items,
        listing.unreachable,
        page,
        per_page,
        q.state,
        q.name,
    )))
}

fn paginate(
    all: Vec<TaskInfo>,
    unreachable: Vec<String>,
    page: usize,
    per_page: usize,
    state: Option<String>,
    name: Option<String>,
) -> TasksPage {
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for t in &all {
        *counts.entry((t.name.clone(), t.state.clone())).or_default() += 1;
    }
    let state = state.filter(|s| !s.is_empty());
    let name = name.filter(|s| !s.is_empty());
    let mut matching: Vec<TaskInfo> = all
        .into_iter()
        .filter(|t| state.as_deref().is_none_or(|s| t.state.eq_ignore_ascii_case(s)))
        .filter(|t| name.as_deref().is_none_or(|n| t.name.contains(n)))
        .collect();
    // Newest first.
    matching.reverse();
    let total = matching.len();
    let items = matching
        .into_iter()
        // A page past the end is empty, however far (no overflow).
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .collect();
    TasksPage {
        total,
        page,
        per_page,
        pages: total.div_ceil(per_page),
        counts: counts
            .into_iter()
            .map(|((name, state), count)| Count { name, state, count })
            .collect(),
        items,
        unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(i: usize, name: &str, state: &str) -> TaskInfo {
        TaskInfo {
            task_id: format!("{i:024x}"),
            name: name.into(),
            kind: "NORMAL_TASK".into(),
            state: state.into(),
            node_id: "n".into(),
            pid: 1,
            job_id: String::new(),
            start_us: i as u64,
            end_us: 0,
            error: String::new(),
            wait_reason: String::new(),
        }
    }

    #[test]
    fn a_page_far_past_the_end_is_empty_not_a_panic() {
        let all: Vec<TaskInfo> = (0..3).map(|i| task(i, "m::f", "FINISHED")).collect();
        let p = paginate(all, vec![], usize::MAX, 100, None, None);
        assert!(p.items.is_empty());
        assert_eq!(p.total, 3);
    }

    #[test]
    fn pages_are_newest_first_filtered_and_counted_over_everything() {
        let all: Vec<TaskInfo> = (0..25)
            .map(|i| {
                task(
                    i,
                    if i % 2 == 0 { "m::even" } else { "m::odd" },
                    if i < 20 { "FINISHED" } else { "PENDING" },
                )
            })
            .collect();
        let p = paginate(all.clone(), vec![], 1, 10, None, None);
        assert_eq!((p.total, p.pages, p.items.len()), (25, 3, 10));
        assert_eq!(p.items[0].start_us, 24);
        let p3 = paginate(all.clone(), vec![], 3, 10, None, None);
        assert_eq!(
            p3.items.iter().map(|t| t.start_us).collect::<Vec<_>>(),
            vec![4, 3, 2, 1, 0]
        );
        let pending = paginate(all.clone(), vec![], 1, 10, Some("pending".into()), Some("odd".into()));
        assert_eq!(
            pending.items.iter().map(|t| t.start_us).collect::<Vec<_>>(),
            vec![23, 21]
        );
        assert_eq!(
            pending.counts,
            vec![
                Count {
                    name: "m::even".into(),
                    state: "FINISHED".into(),
                    count: 10
                },
                Count {
                    name: "m::even".into(),
                    state: "PENDING".into(),
                    count: 3
                },
                Count {
                    name: "m::odd".into(),
                    state: "FINISHED".into(),
                    count: 10
                },
                Count {
                    name: "m::odd".into(),
                    state: "PENDING".into(),
                    count: 2
                },
            ]
        );
        assert!(paginate(all, vec![], 9, 10, None, None).items.is_empty());
    }
}
