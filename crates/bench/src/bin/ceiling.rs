//! `rollcall-bench-ceiling`: the benchmark's ceiling, a trivial axum server that answers every
//! request with a small constant JSON body. It reads the request body (as the registry does)
//! but parses nothing, decides nothing and stores nothing, so its rate is what the HTTP stack
//! alone can do on this machine with the same client.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::header;
use axum::Router;
use clap::Parser;
use rollcall_protocol::HeartbeatResponse;

#[derive(Debug, Parser)]
#[command(
    name = "rollcall-bench-ceiling",
    about = "A trivial axum server answering every request with a small JSON body"
)]
struct Cli {
    /// Address and port to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:7499")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The answer: a heartbeat response like the registry's, serialised once.
    let body = Bytes::from(serde_json::to_vec(&HeartbeatResponse {
        cluster: "ceiling".into(),
        node: "ceiling".into(),
        registered: false,
        ttl_ms: 15_000,
        interval_ms: 5_000,
        absent: Vec::new(),
        server_slot_open: false,
        expect: None,
    })?);
    let app = Router::new().fallback(move |_request_body: Bytes| {
        std::future::ready(([(header::CONTENT_TYPE, "application/json")], body.clone()))
    });
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
