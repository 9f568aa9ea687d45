//! The plain-text dialect of the seeds (`/ws`, `/ws/{client_id}`): the
//! texts a client reads, word for word as the FastAPI servers sent them.

/// First frame every client receives (seed 000/001).
pub const CONNECTED: &str = "🟢 Connected to server";
/// Notice sent to every client when a drain starts; contains `shutting down`.
pub const SHUTDOWN_NOTICE: &str =
    "🔴 Server is shutting down: finish your work and reconnect later";

/// `You said: T`, the echo a sender receives for its own message.
pub fn you_said(text: &str) -> String {
    format!("You said: {text}")
}

/// `New message: T`, what every other client receives.
pub fn new_message(text: &str) -> String {
    format!("New message: {text}")
}

/// `Periodic notification: every N seconds` (seed 002).
pub fn periodic(every: std::time::Duration) -> String {
    let secs = every.as_secs_f64();
    if secs.fract() == 0.0 {
        format!("Periodic notification: every {} seconds", secs as u64)
    } else {
        format!("Periodic notification: every {secs} seconds")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_text_matches_the_seed() {
        let ten = std::time::Duration::from_secs(10);
        assert_eq!(periodic(ten), "Periodic notification: every 10 seconds");
    }
}
