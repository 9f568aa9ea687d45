//! The baseline wsnotify is measured against: what a Rust user would write
//! instead, following axum's chat example — axum's `ws` (tokio-tungstenite)
//! and one `tokio::sync::broadcast` channel, with wsnotify's `/ws` and
//! `/broadcast` shape. Deliberately plain: no tuning beyond the example.

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8060)]
    port: u16,
    /// Capacity of the broadcast channel (a lagging client loses messages).
    #[arg(long, default_value_t = 1024)]
    capacity: usize,
}

#[derive(Clone)]
struct AppState {
    tx: broadcast::Sender<String>,
}

#[derive(Deserialize)]
struct Body {
    message: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (tx, _) = broadcast::channel(args.capacity);
    let app = Router::new()
        .route("/ws", get(ws_handler))
        .route("/broadcast", post(publish))
        .with_state(AppState { tx });
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    eprintln!(
        "baseline-axum listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}

async fn ws_handler(ws: WebSocketUpgrade, State(state): State<AppState>) -> impl IntoResponse {
    ws.on_upgrade(|socket| session(socket, state))
}

async fn publish(State(state): State<AppState>, Json(body): Json<Body>) -> impl IntoResponse {
    let _ = state.tx.send(body.message);
    Json(serde_json::json!({ "status": "Message broadcasted" }))
}

async fn session(socket: WebSocket, state: AppState) {
    let (mut sender, mut receiver) = socket.split();
    let mut rx = state.tx.subscribe();
    if sender
        .send(Message::Text("🟢 Connected to server".into()))
        .await
        .is_err()
    {
        return;
    }
    let mut send_task = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(msg) => {
                    if sender.send(Message::Text(msg.into())).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    let tx = state.tx.clone();
    let mut recv_task = tokio::spawn(async move {
        while let Some(Ok(Message::Text(text))) = receiver.next().await {
            let _ = tx.send(format!("New message: {}", text.as_str()));
        }
    });
    tokio::select! {
        _ = &mut send_task => recv_task.abort(),
        _ = &mut recv_task => send_task.abort(),
    }
}
