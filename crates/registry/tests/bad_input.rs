//! Every bad request gets a 4xx with a stable code and changes nothing; tokens scope writes.

mod common;

use std::collections::BTreeMap;

use common::{after_grace, TestRegistry};
use reqwest::Method;
use rollcall_protocol::{ClaimRequest, ClientError, ErrorBody, HeartbeatRequest, MemberRole};
use serde_json::Value;

/// Everything a client can observe about the store, without the clock-driven fields.
async fn snapshot(reg: &TestRegistry) -> Value {
    let http = reqwest::Client::new();
    let clusters: Value = http
        .get(format!("{}/v1/clusters", reg.url()))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let mut out = serde_json::Map::new();
    for c in clusters["clusters"].as_array().expect("array") {
        let name = c["cluster"].as_str().expect("name").to_string();
        let mut detail: Value = http
            .get(format!("{}/v1/clusters/{name}", reg.url()))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        for m in detail["members"].as_array_mut().expect("members") {
            let m = m.as_object_mut().expect("object");
            m.remove("age_ms");
            m.remove("expires_in_ms");
        }
        for c in detail["claims"].as_array_mut().expect("claims") {
            c.as_object_mut().expect("object").remove("expires_in_ms");
        }
        out.insert(name, detail);
    }
    Value::Object(out)
}

/// (method, path, content type, body, expected status, expected code)
type BadCase = (
    Method,
    String,
    Option<&'static str>,
    String,
    u16,
    &'static str,
);

#[tokio::test]
async fn thirty_bad_inputs_each_get_their_4xx_and_change_nothing() {
    let reg = TestRegistry::start(&[
        "--ttl",
        "60s",
        "--interval",
        "500ms",
        "--startup-grace",
        "500ms",
        "--quiet-period",
        "500ms",
        "--max-body-bytes",
        "4096",
    ])
    .await;
    after_grace(&reg).await;
    let c = reg.client();
    c.heartbeat(
        "prod",
        "n1",
        &HeartbeatRequest {
            raft_members: None,
            address: "10.0.0.1:8300".into(),
            role: MemberRole::Server,
            status: None,
            meta: BTreeMap::new(),
            raft: None,
        },
    )
    .await
    .expect("seed member");
    c.claim(
        "prod",
        &ClaimRequest {
            node: "n2".into(),
            address: "10.0.0.2:8300".into(),
            expect: 3,
            agent_only: false,
            started_as: None,
            raft: None,
        },
    )
    .await
    .expect("seed claim");
    let before = snapshot(&reg).await;

    let json = "application/json";
    let long = "x".repeat(64);
    let huge_meta: serde_json::Map<String, Value> = (0..17)
        .map(|i| (format!("k{i}"), Value::from("v")))
        .collect();
    let big_body = format!(
        r#"{{"address":"10.0.0.1:8300","role":"server","meta":{{"k":"{}"}}}}"#,
        "v".repeat(5000)
    );
    let put = Method::PUT;
    let post = Method::POST;
    let cases: Vec<BadCase> = vec![
        // (method, path, content type, body, status, code)
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            r#"{"address":"10.0.0.1","role":"server"}"#.into(),
            400,
            "invalid_address",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            r#"{"address":"10.0.0.1:0","role":"server"}"#.into(),
            400,
            "invalid_address",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            r#"{"address":"10.0.0.1:65536","role":"server"}"#.into(),
            400,
            "invalid_address",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            r#"{"address":"999.0.0.1:80","role":"server"}"#.into(),
            400,
            "invalid_address",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            r#"{"address":"::1:80","role":"server"}"#.into(),
            400,
            "invalid_address",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            r#"{"address":"","role":"server"}"#.into(),
            400,
            "invalid_address",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            r#"{"address":"10.0.0.1:8300","role":"leader"}"#.into(),
            400,
            "invalid_body",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            r#"{"address":"10.0.0.1:8300"}"#.into(),
            400,
            "invalid_body",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            r#"{"address":"10.0.0.1:8300","role":"server","colour":"red"}"#.into(),
            400,
            "invalid_body",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            r#"{"address":"10.0.0.1:8300","role":"server""#.into(),
            400,
            "invalid_body",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            "".into(),
            400,
            "invalid_body",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            "[]".into(),
            400,
            "invalid_body",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            r#"{"address":42,"role":"server"}"#.into(),
            400,
            "invalid_body",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            None,
            r#"{"address":"10.0.0.1:8300","role":"server"}"#.into(),
            415,
            "invalid_body",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some("text/plain"),
            r#"{"address":"10.0.0.1:8300","role":"server"}"#.into(),
            415,
            "invalid_body",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            serde_json::json!({"address":"10.0.0.1:8300","role":"server","meta": huge_meta})
                .to_string(),
            400,
            "invalid_metadata",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            r#"{"address":"10.0.0.1:8300","role":"server","meta":{"":"x"}}"#.into(),
            400,
            "invalid_metadata",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            big_body,
            413,
            "body_too_large",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            r#"{"address":"10.0.0.1:8300","role":"server","status":{"peers":-1}}"#.into(),
            400,
            "invalid_body",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            format!(
                r#"{{"address":"10.0.0.1:8300","role":"server","status":{{"leader":"{}"}}}}"#,
                "l".repeat(300)
            ),
            400,
            "invalid_body",
        ),
        (
            put.clone(),
            format!("/v1/clusters/prod/members/{long}"),
            Some(json),
            r#"{"address":"10.0.0.1:8300","role":"server"}"#.into(),
            400,
            "invalid_node_name",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/-n1".into(),
            Some(json),
            r#"{"address":"10.0.0.1:8300","role":"server"}"#.into(),
            400,
            "invalid_node_name",
        ),
        (
            put.clone(),
            "/v1/clusters/prod/members/n%201".into(),
            Some(json),
            r#"{"address":"10.0.0.1:8300","role":"server"}"#.into(),
            400,
            "invalid_node_name",
        ),
        (
            put.clone(),
            "/v1/clusters/pr%2Fod/members/n1".into(),
            Some(json),
            r#"{"address":"10.0.0.1:8300","role":"server"}"#.into(),
            400,
            "invalid_cluster_name",
        ),
        (
            put.clone(),
            "/v1/clusters/pr%C3%A4d/members/n1".into(),
            Some(json),
            r#"{"address":"10.0.0.1:8300","role":"server"}"#.into(),
            400,
            "invalid_cluster_name",
        ),
        (
            post.clone(),
            "/v1/clusters/prod/claims".into(),
            Some(json),
            r#"{"node":"n3","address":"10.0.0.3:8300","expect":0}"#.into(),
            400,
            "invalid_expect",
        ),
        (
            post.clone(),
            "/v1/clusters/prod/claims".into(),
            Some(json),
            r#"{"node":"n3","address":"10.0.0.3:8300","expect":99}"#.into(),
            400,
            "invalid_expect",
        ),
        (
            post.clone(),
            "/v1/clusters/prod/claims".into(),
            Some(json),
            r#"{"node":"n3","address":"10.0.0.3:8300","expect":-3}"#.into(),
            400,
            "invalid_body",
        ),
        (
            post.clone(),
            "/v1/clusters/prod/claims".into(),
            Some(json),
            r#"{"node":"n 3","address":"10.0.0.3:8300","expect":3}"#.into(),
            400,
            "invalid_node_name",
        ),
        (
            post.clone(),
            "/v1/clusters/prod/claims".into(),
            Some(json),
            r#"{"node":"n3","address":"nope","expect":3}"#.into(),
            400,
            "invalid_address",
        ),
        (
            post.clone(),
            "/v1/clusters/prod/claims".into(),
            Some(json),
            r#"{"node":"n3","expect":3}"#.into(),
            400,
            "invalid_body",
        ),
        (
            post.clone(),
            "/v1/clusters/_x/claims".into(),
            Some(json),
            r#"{"node":"n3","address":"10.0.0.3:8300","expect":3}"#.into(),
            400,
            "invalid_cluster_name",
        ),
        (
            Method::DELETE,
            "/v1/clusters/prod/members/nobody".into(),
            None,
            String::new(),
            404,
            "not_found",
        ),
        (
            Method::DELETE,
            "/v1/clusters/prod/members/no%2Fbody".into(),
            None,
            String::new(),
            400,
            "invalid_node_name",
        ),
        (
            Method::GET,
            "/v1/clusters/prod/members?role=leader".into(),
            None,
            String::new(),
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/members?format=xml".into(),
            None,
            String::new(),
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/members?cluster=a%20b".into(),
            None,
            String::new(),
            400,
            "invalid_cluster_name",
        ),
        (
            Method::GET,
            "/members?bogus=1".into(),
            None,
            String::new(),
            400,
            "invalid_query",
        ),
        (
            Method::PATCH,
            "/v1/clusters/prod/members/n1".into(),
            Some(json),
            "{}".into(),
            405,
            "method_not_allowed",
        ),
        (
            Method::POST,
            "/v1/clusters".into(),
            Some(json),
            "{}".into(),
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/v2/anything".into(),
            None,
            String::new(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/clusters/unknown".into(),
            None,
            String::new(),
            404,
            "not_found",
        ),
    ];
    let http = reqwest::Client::new();
    for (method, path, content_type, body, status, code) in &cases {
        let mut req = http
            .request(method.clone(), format!("{}{}", reg.url(), path))
            .body(body.clone());
        if let Some(ct) = content_type {
            req = req.header("content-type", *ct);
        }
        let resp = req.send().await.expect("send");
        let got = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        assert_eq!(got, *status, "{method} {path} {body:.80}: got {got} {text}");
        let err: ErrorBody = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not an error body ({e}): {text}"));
        assert_eq!(
            err.code.as_str(),
            *code,
            "{method} {path} {body:.80}: {text}"
        );
        assert!(!err.message.is_empty());
    }
    assert_eq!(
        snapshot(&reg).await,
        before,
        "a refused request changed the store"
    );
    assert!(
        reg.client().health().await.is_ok(),
        "the registry still answers"
    );
}

#[tokio::test]
async fn a_cluster_scoped_token_cannot_write_to_another_cluster() {
    let reg = TestRegistry::start(&[
        "--ttl",
        "60s",
        "--interval",
        "500ms",
        "--startup-grace",
        "500ms",
        "--quiet-period",
        "500ms",
        "--token",
        "root-secret",
        "--cluster-token",
        "blue=blue-secret,green=green-secret",
    ])
    .await;
    after_grace(&reg).await;
    let hb = HeartbeatRequest {
        raft_members: None,
        address: "10.0.0.1:8300".into(),
        role: MemberRole::Server,
        status: None,
        meta: BTreeMap::new(),
        raft: None,
    };
    let claim = ClaimRequest {
        node: "n2".into(),
        address: "10.0.0.2:8300".into(),
        expect: 3,
        agent_only: false,
        started_as: None,
        raft: None,
    };

    let blue = reg.client_with_token("blue-secret");
    blue.heartbeat("blue", "n1", &hb)
        .await
        .expect("blue writes blue");
    let before = snapshot(&reg).await;

    let status = |e: ClientError| match e {
        ClientError::Api { status, .. } => status,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        status(
            blue.heartbeat("green", "n1", &hb)
                .await
                .expect_err("blue writes green")
        ),
        403
    );
    assert_eq!(
        status(
            blue.claim("green", &claim)
                .await
                .expect_err("blue claims in green")
        ),
        403
    );
    assert_eq!(
        status(
            blue.leave("green", "n1")
                .await
                .expect_err("blue leaves green")
        ),
        403
    );
    assert_eq!(
        status(
            blue.heartbeat("red", "n1", &hb)
                .await
                .expect_err("blue writes an unlisted cluster")
        ),
        403
    );
    let nobody = reg.client();
    assert_eq!(
        status(
            nobody
                .heartbeat("blue", "n9", &hb)
                .await
                .expect_err("no token")
        ),
        401
    );
    let wrong = reg.client_with_token("blue-secreT");
    assert_eq!(
        status(
            wrong
                .heartbeat("blue", "n9", &hb)
                .await
                .expect_err("wrong token")
        ),
        401
    );
    assert_eq!(
        status(
            wrong
                .leave("blue", "n1")
                .await
                .expect_err("wrong token leaves")
        ),
        401
    );
    assert_eq!(
        snapshot(&reg).await,
        before,
        "a refused write changed the store"
    );

    // Reads stay open; the registry-wide token writes anywhere.
    assert_eq!(
        nobody
            .members("blue", None)
            .await
            .expect("read")
            .members
            .len(),
        1
    );
    reg.client_with_token("root-secret")
        .heartbeat("green", "n1", &hb)
        .await
        .expect("root writes green");
}

/// The token is checked before the body is read: without one, a write is told 401 whatever
/// its body (not 400 or 415, which would tell an anonymous client how the body is parsed).
#[tokio::test]
async fn the_token_is_checked_before_the_body() {
    let reg = TestRegistry::start(&[
        "--token",
        "secret",
        "--startup-grace",
        "500ms",
        "--interval",
        "500ms",
    ])
    .await;
    let http = reqwest::Client::new();
    for (method, path, content_type, body) in [
        (
            reqwest::Method::POST,
            "/v1/clusters/c/claims",
            "text/plain",
            "not json",
        ),
        (
            reqwest::Method::POST,
            "/v1/clusters/c/claims",
            "application/json",
            "{\"node\":",
        ),
        (
            reqwest::Method::PUT,
            "/v1/clusters/c/members/n",
            "application/json",
            "[1,2]",
        ),
        (
            reqwest::Method::POST,
            "/v1/clusters/c/reset",
            "application/json",
            "{}",
        ),
    ] {
        let answer = http
            .request(method.clone(), format!("{}{path}", reg.url()))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(answer.status().as_u16(), 401, "{method} {path} {body}");
    }
    // With the token, the same bodies are judged on their merits.
    let answer = http
        .post(format!("{}/v1/clusters/c/claims", reg.url()))
        .header("authorization", "BEARER secret")
        .header("content-type", "text/plain")
        .body("not json")
        .send()
        .await
        .expect("send");
    assert_eq!(answer.status().as_u16(), 415);
}
