//! Bounds on open connections: in total, and per client IP address. A
//! connection over a bound gets a JSON `overloaded` answer with
//! `Retry-After` (503 over the total, 429 over its address's share) and
//! is closed; idle ones are closed by the header read timeout.

use crate::error::ApiError;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Connections {
    total: usize,
    per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// The metrics' gauge of open connections.
    gauge: Gauge,
}

/// One open connection; released when dropped.
pub struct Open {
    pool: Arc<Connections>,
    ip: IpAddr,
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut open = self.pool.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 -= 1;
        self.pool.gauge.dec();
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

impl Connections {
    pub fn new(total: usize, per_ip: usize, gauge: Gauge) -> Arc<Connections> {
        Arc::new(Connections {
            total: total.max(1),
            per_ip: per_ip.max(1),
            open: Mutex::default(),
            gauge,
        })
    }

    /// Counts a new connection from `ip`, or says why it may not stay.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Open, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= self.total {
            return Err(ApiError::Overloaded {
                caller: false,
                message: format!(
                    "the witness has {} connections open, its most; retry",
                    self.total
                ),
            });
        }
        let n = open.1.entry(ip).or_insert(0);
        if *n >= self.per_ip {
            return Err(ApiError::Overloaded {
                caller: true,
                message: format!(
                    "{} connections are open from your address, the most allowed; retry",
                    self.per_ip
                ),
            });
        }
        *n += 1;
        open.0 += 1;
        self.gauge.inc();
        Ok(Open {
            pool: self.clone(),
            ip,
        })
    }
}

/// Answers a connection that may not stay, then closes it. What the client
/// sends meanwhile is read and dropped until it closes too, so the close
/// does not reset the connection before the answer is read; a client that
/// does neither is dropped after two seconds.
pub async fn refuse(mut stream: tokio::net::TcpStream, e: ApiError) {
    let body = serde_json::to_string(&e.body()).unwrap_or_default();
    let status = e.status();
    let answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\nretry-after: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        e.retry_after().unwrap_or(1),
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}
