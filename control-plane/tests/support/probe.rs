//! A NATS client that collects the server's errors, to see the permission violations it gets.

// Test binaries include this module directly or through the support module, and each uses
// part of it.
#![allow(unreachable_pub, dead_code)]

use std::time::Duration;

use tokio::sync::mpsc;
use warden_bus::transport::nats::NatsConnectConfig;

/// Time a probe waits for the server to report a permission violation.
pub const VIOLATION_WAIT: Duration = Duration::from_secs(3);

/// A client whose server errors are collected, to see the permission violations it gets.
pub struct Probe {
    pub client: async_nats::Client,
    errors: mpsc::UnboundedReceiver<String>,
}

impl Probe {
    pub async fn connect(config: &NatsConnectConfig) -> Self {
        let (sender, errors) = mpsc::unbounded_channel();
        let options = config
            .connect_options()
            .unwrap()
            .event_callback(move |event| {
                let sender = sender.clone();
                async move {
                    if let async_nats::Event::ServerError(error) = event {
                        let _ = sender.send(error.to_string());
                    }
                }
            });
        let client = options.connect(config.servers.as_slice()).await.unwrap();
        Self { client, errors }
    }

    /// Waits for a permission violation that names `subject`. The `operation` names the check in
    /// the failure message.
    pub async fn expect_violation(&mut self, operation: &str, subject: &str) {
        let quoted = format!("\"{subject}\"");
        let deadline = tokio::time::Instant::now() + VIOLATION_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.errors.recv()).await {
                Ok(Some(error))
                    if error.to_lowercase().contains("permissions violation")
                        && error.contains(&quoted) =>
                {
                    return
                }
                // A violation of an earlier check that arrived late.
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => panic!(
                    "{operation} {subject}: the server reported no permission violation within {VIOLATION_WAIT:?}"
                ),
            }
        }
    }

    /// Waits for any server error containing `text`.
    pub async fn expect_error(&mut self, check: &str, text: &str, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.errors.recv()).await {
                Ok(Some(error)) if error.to_lowercase().contains(text) => return,
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => {
                    panic!("{check}: no server error containing {text:?} within {wait:?}")
                }
            }
        }
    }
}
