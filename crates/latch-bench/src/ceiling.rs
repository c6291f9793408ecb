//! The machine's ceiling: a bare HTTP handler on the same stack as latch (axum served by
//! `latch_http::serve`, on a tokio multi-thread runtime) that reads and parses the form body
//! and answers 200, touching no storage.

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;
use tokio::net::TcpListener;

async fn bare(body: Bytes) -> axum::http::StatusCode {
    match latch_http::form::Form::parse(&body) {
        Ok(_) => axum::http::StatusCode::OK,
        Err(_) => axum::http::StatusCode::BAD_REQUEST,
    }
}

/// Serves the bare handler until killed; prints the address like `latch serve` does.
pub async fn serve(listen: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("latch listening on http://{}", listener.local_addr()?);
    let app = Router::new().fallback(post(bare));
    latch_http::serve::serve(
        listener,
        app,
        latch_http::serve::Limits::default(),
        Default::default(),
        std::future::pending(),
        std::future::pending(),
    )
    .await?;
    Ok(())
}
