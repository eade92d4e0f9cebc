//! The ceiling for the load benchmark: a bare axum server on the same stack
//! that reads the body and answers the success envelope, nothing else.
//! `scripts/bench-load.sh` runs it beside the receiver and compares the two.
//!
//! cargo run --release --example ceiling -- 127.0.0.1:10007

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::post;
use axum::serve::ListenerExt;

const SUCCESS: &str = r#"{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}"#;

async fn answer(_body: Bytes) -> ([(header::HeaderName, &'static str); 1], &'static str) {
    ([(header::CONTENT_TYPE, "application/json")], SUCCESS)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:10007".to_owned());
    let app = Router::new().route("/callbackExample/{command}", post(answer));
    // TCP_NODELAY, as the receiver sets it: the two differ only in what they do per request.
    let listener = tokio::net::TcpListener::bind(&listen).await?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    eprintln!("ceiling listening on {listen}");
    axum::serve(listener, app).await
}
