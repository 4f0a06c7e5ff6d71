//! A stand-in for one Consul agent's HTTP API: it serves the documented answers
//! (tests/fixtures/consul) on a loopback listener, refuses calls without the ACL token when
//! one is required (403 with Consul's "Permission denied" body, except on `/v1/status/*`,
//! which Consul serves without a token), and records every call with the token it carried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

/// One call the stand-in answered: the method, path, query, body and the `X-Consul-Token`
/// it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulCall {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub body: String,
    pub token: Option<String>,
}

#[derive(Debug, Default)]
struct ConsulState {
    answers: HashMap<String, (u16, String)>,
    required_token: Option<String>,
    calls: Vec<ConsulCall>,
}

/// The stand-in, served until the test's runtime ends.
#[derive(Debug, Clone)]
pub struct FakeConsul {
    pub url: String,
    state: Arc<Mutex<ConsulState>>,
}

impl FakeConsul {
    /// Serves `answers` (path → status and body; a `GET` by its path, another method as
    /// `"PUT /v1/..."`); any other call answers 404.
    pub async fn start(
        answers: &[(&str, u16, String)],
        required_token: Option<&str>,
    ) -> FakeConsul {
        let state = Arc::new(Mutex::new(ConsulState {
            answers: answers
                .iter()
                .map(|(path, status, body)| (path.to_string(), (*status, body.clone())))
                .collect(),
            required_token: required_token.map(str::to_string),
            calls: Vec::new(),
        }));
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeConsul { url, state }
    }

    /// Changes one answer (the same key as in `start`): the same Consul at a later moment.
    pub fn set_answer(&self, key: &str, status: u16, body: String) {
        self.state
            .lock()
            .expect("lock")
            .answers
            .insert(key.to_string(), (status, body));
    }

    pub fn calls(&self) -> Vec<ConsulCall> {
        self.state.lock().expect("lock").calls.clone()
    }
}

async fn answer(
    State(state): State<Arc<Mutex<ConsulState>>>,
    request: Request,
) -> impl IntoResponse {
    let path = request.uri().path().to_string();
    let query = request.uri().query().map(str::to_string);
    let method = request.method().to_string();
    let token = request
        .headers()
        .get("X-Consul-Token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let mut state = state.lock().expect("lock");
    state.calls.push(ConsulCall {
        method: method.clone(),
        path: path.clone(),
        query,
        body,
        token: token.clone(),
    });
    let needs_token = !path.starts_with("/v1/status/");
    if needs_token && state.required_token.is_some() && token != state.required_token {
        let denied = std::fs::read_to_string(format!(
            "{}/tests/fixtures/consul/acl_permission_denied.txt",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("fixture");
        return (StatusCode::FORBIDDEN, denied);
    }
    let key = if method == "GET" {
        path
    } else {
        format!("{method} {path}")
    };
    match state.answers.get(&key) {
        Some((status, body)) => (StatusCode::from_u16(*status).expect("status"), body.clone()),
        None => (StatusCode::NOT_FOUND, "404 page not found".to_string()),
    }
}
