//! The live feed behind `WatchService`: cursors, one tailer per replica that reads the
//! `feed_events` table below the xid8 watermark and fans batches out in memory, the per-stream
//! subscriptions that filter them (falling back to the database when they lag), and the pruner
//! that enforces retention.

pub mod cursor;
pub mod event;
pub mod hub;
pub mod prune;
pub mod subscription;
pub mod wire;

use std::time::Duration;

pub use hub::Hub;

/// How the feed is read, fanned out and kept.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// Fallback poll of the tailer, for changes whose notification was missed (and for
    /// watermarks held back by transactions that write no events).
    pub poll_interval: Duration,
    /// How long a stream may stay silent before a heartbeat, unless the request says.
    pub heartbeat_interval: Duration,
    /// How long a send to a consumer may wait before the stream is ended as too slow.
    pub stuck_timeout: Duration,
    /// Batches a consumer may lag behind the tailer before it is served from the database by
    /// its own cursor.
    pub live_buffer: usize,
    /// Messages queued per stream.
    pub send_buffer: usize,
    /// Feed events older than this are pruned.
    pub retention: Duration,
    /// How often the pruner runs.
    pub prune_interval: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(5),
            stuck_timeout: Duration::from_secs(30),
            live_buffer: 1024,
            send_buffer: 64,
            retention: Duration::from_secs(7 * 24 * 3600),
            prune_interval: Duration::from_secs(60),
        }
    }
}
