//! Tenant endpoints of the Actions service that ARC's controller uses:
//! runner groups, scale sets, JIT configs, agents (runners).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ScaleSet;
use super::state::Shared;
use super::wire::{b64url, error_body, reply, scale_set_json};

#[derive(Debug, Deserialize)]
pub(super) struct GroupQuery {
    #[serde(rename = "groupName")]
    group_name: Option<String>,
}

pub(super) async fn runner_groups(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<GroupQuery>,
) -> Response {
    let mut st = match sh.admin(&headers, "runner_groups") {
        Ok(st) => st,
        Err(early) => return *early,
    };
    st.count("runner_groups", StatusCode::OK);
    let name = q.group_name.unwrap_or_else(|| "Default".to_owned());
    if st.removed_groups.contains(&name) {
        // GitHub finds no group: ARC's clients turn count 0 into an error.
        return reply(StatusCode::OK, Some(json!({"count": 0, "value": []})));
    }
    // Any other name exists (created on first lookup), so that scenarios can
    // use runner groups without registering them first.
    let next = st.groups.values().max().copied().unwrap_or(0) + 1;
    let id = *st.groups.entry(name.clone()).or_insert(next);
    reply(
        StatusCode::OK,
        Some(
            json!({"count": 1, "value": [{"id": id, "name": name, "size": 0, "isDefaultGroup": id == 1}]}),
        ),
    )
}

#[derive(Debug, Deserialize)]
pub(super) struct ScaleSetQuery {
    name: Option<String>,
    #[serde(rename = "runnerGroupId")]
    runner_group_id: Option<i64>,
}

pub(super) async fn scale_set_list(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<ScaleSetQuery>,
) -> Response {
    let mut st = match sh.admin(&headers, "scale_set_list") {
        Ok(st) => st,
        Err(early) => return *early,
    };
    st.count("scale_set_list", StatusCode::OK);
    let found: Vec<Value> = st
        .scale_sets
        .values()
        .filter(|s| q.name.as_deref().is_none_or(|n| n == s.name))
        .filter(|s| q.runner_group_id.is_none_or(|g| g == s.runner_group_id))
        .map(scale_set_json)
        .collect();
    reply(
        StatusCode::OK,
        Some(json!({"count": found.len(), "value": found})),
    )
}

pub(super) async fn scale_set_create(
    State(sh): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = match sh.admin(&headers, "scale_set_create") {
        Ok(st) => st,
        Err(early) => return *early,
    };
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        st.count("scale_set_create", StatusCode::BAD_REQUEST);
        return reply(
            StatusCode::BAD_REQUEST,
            Some(error_body("ArgumentException", "invalid JSON body")),
        );
    };
    let Some(name) = v.get("name").and_then(Value::as_str).map(str::to_owned) else {
        st.count("scale_set_create", StatusCode::BAD_REQUEST);
        return reply(
            StatusCode::BAD_REQUEST,
            Some(error_body("ArgumentException", "name is required")),
        );
    };
    let group_id = v.get("runnerGroupId").and_then(Value::as_i64).unwrap_or(1);
    let group_name = st
        .groups
        .iter()
        .find(|(_, id)| **id == group_id)
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| "Default".to_owned());
    if st
        .scale_sets
        .values()
        .any(|s| s.name == name && s.runner_group_id == group_id)
    {
        st.count("scale_set_create", StatusCode::CONFLICT);
        return reply(
            StatusCode::CONFLICT,
            Some(error_body(
                "RunnerScaleSetExistsException",
                &format!("The runner scale set {name} already exists."),
            )),
        );
    }
    st.next_scale_set += 1;
    let id = st.next_scale_set;
    let ss = ScaleSet {
        id,
        name,
        runner_group_id: group_id,
        runner_group_name: group_name,
        labels: v.get("labels").cloned().unwrap_or(json!([])),
    };
    let out = scale_set_json(&ss);
    st.scale_sets.insert(id, ss);
    // Exactly 200: both ARC clients reject 201 here.
    st.count("scale_set_create", StatusCode::OK);
    reply(StatusCode::OK, Some(out))
}

pub(super) async fn scale_set_get(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let mut st = match sh.admin(&headers, "scale_set_get") {
        Ok(st) => st,
        Err(early) => return *early,
    };
    match st.scale_sets.get(&id).map(scale_set_json) {
        Some(v) => {
            st.count("scale_set_get", StatusCode::OK);
            reply(StatusCode::OK, Some(v))
        }
        None => {
            st.count("scale_set_get", StatusCode::NOT_FOUND);
            reply(
                StatusCode::NOT_FOUND,
                Some(error_body(
                    "RunnerScaleSetNotFoundException",
                    "scale set not found",
                )),
            )
        }
    }
}

pub(super) async fn scale_set_update(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    let mut st = match sh.admin(&headers, "scale_set_update") {
        Ok(st) => st,
        Err(early) => return *early,
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let group_names: BTreeMap<i64, String> =
        st.groups.iter().map(|(n, id)| (*id, n.clone())).collect();
    let Some(ss) = st.scale_sets.get_mut(&id) else {
        st.count("scale_set_update", StatusCode::NOT_FOUND);
        return reply(
            StatusCode::NOT_FOUND,
            Some(error_body(
                "RunnerScaleSetNotFoundException",
                "scale set not found",
            )),
        );
    };
    if let Some(n) = v.get("name").and_then(Value::as_str) {
        n.clone_into(&mut ss.name);
    }
    if let Some(g) = v
        .get("runnerGroupId")
        .and_then(Value::as_i64)
        .filter(|g| *g > 0)
    {
        ss.runner_group_id = g;
        ss.runner_group_name = group_names
            .get(&g)
            .cloned()
            .unwrap_or_else(|| "Default".to_owned());
    }
    if let Some(l) = v.get("labels") {
        ss.labels = l.clone();
    }
    let out = scale_set_json(ss);
    st.count("scale_set_update", StatusCode::OK);
    reply(StatusCode::OK, Some(out))
}

pub(super) async fn scale_set_delete(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let mut st = match sh.admin(&headers, "scale_set_delete") {
        Ok(st) => st,
        Err(early) => return *early,
    };
    st.scale_sets.remove(&id);
    st.sessions.clear(id);
    drop(st);
    sh.changed.notify_waiters();
    let mut st = sh.lock();
    st.count("scale_set_delete", StatusCode::NO_CONTENT);
    reply(StatusCode::NO_CONTENT, None)
}

pub(super) async fn acquirable_jobs(State(sh): State<Shared>, headers: HeaderMap) -> Response {
    let mut st = match sh.admin(&headers, "acquirable_jobs") {
        Ok(st) => st,
        Err(early) => return *early,
    };
    st.count("acquirable_jobs", StatusCode::OK);
    reply(StatusCode::OK, Some(json!({"count": 0, "value": []})))
}

pub(super) async fn generate_jit_config(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    let mut st = match sh.admin(&headers, "generate_jit_config") {
        Ok(st) => st,
        Err(early) => return *early,
    };
    let name = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    st.next_agent += 1;
    let agent = st.next_agent;
    st.agents.insert(agent, (name.clone(), id));
    st.count("generate_jit_config", StatusCode::OK);
    let runner = json!({"id": agent, "name": name, "runnerScaleSetId": id});
    reply(
        StatusCode::OK,
        Some(json!({"runner": runner, "encodedJITConfig": b64url(b"{}")})),
    )
}

#[derive(Debug, Deserialize)]
pub(super) struct AgentQuery {
    #[serde(rename = "agentName")]
    agent_name: Option<String>,
}

pub(super) async fn agents_get(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<AgentQuery>,
) -> Response {
    let mut st = match sh.admin(&headers, "agents_get") {
        Ok(st) => st,
        Err(early) => return *early,
    };
    let found: Vec<Value> = st
        .agents
        .iter()
        .filter(|(_, (n, _))| q.agent_name.as_deref().is_none_or(|x| x == n))
        .map(|(id, (n, ss))| json!({"id": id, "name": n, "runnerScaleSetId": ss}))
        .collect();
    st.count("agents_get", StatusCode::OK);
    reply(
        StatusCode::OK,
        Some(json!({"count": found.len(), "value": found})),
    )
}

pub(super) async fn agent_get(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let mut st = match sh.admin(&headers, "agent_get") {
        Ok(st) => st,
        Err(early) => return *early,
    };
    match st.agents.get(&id).cloned() {
        Some((n, ss)) => {
            st.count("agent_get", StatusCode::OK);
            reply(
                StatusCode::OK,
                Some(json!({"id": id, "name": n, "runnerScaleSetId": ss})),
            )
        }
        None => {
            st.count("agent_get", StatusCode::NOT_FOUND);
            reply(
                StatusCode::NOT_FOUND,
                Some(error_body("AgentNotFoundException", "agent not found")),
            )
        }
    }
}

pub(super) async fn agent_delete(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let mut st = match sh.admin(&headers, "agent_delete") {
        Ok(st) => st,
        Err(early) => return *early,
    };
    // 204 even for unknown ids, or ARC's runner finalizers never clear.
    st.agents.remove(&id);
    st.count("agent_delete", StatusCode::NO_CONTENT);
    reply(StatusCode::NO_CONTENT, None)
}
