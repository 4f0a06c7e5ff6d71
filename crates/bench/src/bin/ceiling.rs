//! `rollcall-bench-ceiling`: the benchmark's ceiling, a trivial axum server that answers every
//! request with a small constant JSON body. It reads the request body (as the registry does)
//! but parses nothing, decides nothing and stores nothing, so its rate is what the HTTP stack
//! alone can do on this machine with the same client.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Router;
use clap::Parser;

/// The answer: about the size of the registry's heartbeat response.
const BODY: &str = r#"{"cluster":"ceiling","node":"ceiling","registered":false,"ttl_ms":15000,"interval_ms":5000}"#;

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

async fn answer(_body: Bytes) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], BODY)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let app = Router::new().fallback(answer);
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
