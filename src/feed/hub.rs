//! One tailer per replica: it reads each watched tenant's feed below the watermark and fans the
//! batches out in memory to that tenant's streams, so live streams never poll Postgres
//! themselves.
//!
//! The tailer reads a tenant when a committing transaction notifies `callstore_feed` with the
//! tenant's id and the greatest ordering key it wrote, when a stream of a tenant it did not
//! watch yet arrives, every `poll_interval` (for a missed notification), and again soon, backing
//! off, while the watermark has not passed a notified key: those rows are held back by an older
//! transaction still in progress, which may write no events and so never notify.
//!
//! Each tenant has a broadcast channel of `live_buffer` batches. Sending never waits: a stream
//! that falls that far behind finds it has lagged and reads the database by its own cursor until
//! it has caught up. Each batch says the positions it spans, so a stream can tell a batch that
//! continues where it stands from one after a gap.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db::DbError;
use crate::db::feed::{self, FeedSelection};
use crate::domain::TenantId;
use crate::feed::WatchSettings;
use crate::feed::cursor::Position;
use crate::feed::event::{self, Event};

/// The channel committing transactions notify (see the feed migration's trigger).
pub const CHANNEL: &str = "callstore_feed";

/// Rows the tailer reads at once.
const BATCH_ROWS: usize = 500;
/// The first re-read of a held-back tenant; it doubles up to `HELD_BACK_LAST_RETRY`. The
/// transaction holding the watermark may write no events (the statistics compactor, a catalog
/// upsert) and so never notify its end: only these re-reads see it, so they stay frequent.
const HELD_BACK_FIRST_RETRY: Duration = Duration::from_millis(1);
const HELD_BACK_LAST_RETRY: Duration = Duration::from_millis(16);
/// Notifications that may wait for the tailer; beyond them it reads every tenant.
const WAKE_QUEUE: usize = 4096;

/// The feed between two positions of one tenant: the events after `from` up to `to`, in order.
#[derive(Debug)]
pub struct Batch {
    pub from: Position,
    pub to: Position,
    pub events: Vec<Arc<Event>>,
}

/// A stream's way into the tailer's batches of its tenant.
pub struct Live {
    pub batches: broadcast::Receiver<Arc<Batch>>,
    /// Where the tailer stood when the stream subscribed: the first batch it can receive
    /// starts here.
    pub head: Position,
}

/// The replica's tailer; clones share it.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    settings: WatchSettings,
    tenants: Mutex<HashMap<TenantId, Tail>>,
    /// Tenants whose first stream just arrived: the tailer reads them at once.
    arrivals: Mutex<HashSet<TenantId>>,
    arrived: Notify,
    stop: CancellationToken,
}

struct Tail {
    head: Position,
    sender: broadcast::Sender<Arc<Batch>>,
}

enum Wake {
    /// The notification's payload: the tenant and the greatest ordering key written.
    Tenant(String),
    /// The listener reconnected or fell behind: notifications may have been lost.
    All,
}

impl Hub {
    /// Starts the tailer and its listener; both end when `stop` is cancelled, and streams then
    /// find their channel closed.
    pub fn start(pool: PgPool, settings: WatchSettings, stop: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            pool,
            settings,
            tenants: Mutex::new(HashMap::new()),
            arrivals: Mutex::new(HashSet::new()),
            arrived: Notify::new(),
            stop,
        });
        let (wakes, woken) = mpsc::channel(WAKE_QUEUE);
        tokio::spawn(listen(inner.pool.clone(), wakes, inner.stop.clone()));
        tokio::spawn(tail(inner.clone(), woken));
        Self { inner }
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub fn settings(&self) -> &WatchSettings {
        &self.inner.settings
    }

    /// Cancelled when the server shuts down.
    pub fn stopping(&self) -> &CancellationToken {
        &self.inner.stop
    }

    /// Subscribes to the tenant's batches, starting the tenant's tail at the current watermark
    /// when it had no stream on this replica.
    pub async fn subscribe(&self, tenant: &TenantId) -> Result<Live, DbError> {
        if let Some(live) = self.inner.subscribe_existing(tenant) {
            return Ok(live);
        }
        let watermark = Position::watermark(feed::current_snapshot(&self.inner.pool).await?.xmin);
        let live = {
            let mut tenants = lock(&self.inner.tenants);
            let tail = tenants.entry(tenant.clone()).or_insert_with(|| Tail {
                head: watermark,
                sender: broadcast::channel(self.inner.settings.live_buffer.max(1)).0,
            });
            Live {
                batches: tail.sender.subscribe(),
                head: tail.head,
            }
        };
        // Transactions may have committed since the watermark was read, their notifications
        // dropped because nobody watched the tenant yet: read it now.
        lock(&self.inner.arrivals).insert(tenant.clone());
        self.inner.arrived.notify_one();
        Ok(live)
    }
}

impl Inner {
    fn subscribe_existing(&self, tenant: &TenantId) -> Option<Live> {
        let tenants = lock(&self.tenants);
        tenants.get(tenant).map(|tail| Live {
            batches: tail.sender.subscribe(),
            head: tail.head,
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay consistent whatever panicked while holding them.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Forwards notifications to the tailer, reconnecting when the connection drops.
async fn listen(pool: PgPool, wakes: mpsc::Sender<Wake>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            () = stop.cancelled() => return,
            connected = connected => match connected {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(error = %error, retry_ms = backoff.as_millis() as u64,
                        "cannot listen for feed notifications; the tailer polls meanwhile");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(100);
        // Whatever was notified while not listening is found by reading every tenant.
        let _ = wakes.try_send(Wake::All);
        loop {
            let received = tokio::select! {
                () = stop.cancelled() => return,
                received = listener.try_recv() => received,
            };
            match received {
                Ok(Some(notification)) => {
                    let wake = Wake::Tenant(notification.payload().to_owned());
                    if let Err(mpsc::error::TrySendError::Full(_)) = wakes.try_send(wake) {
                        // The tailer is busy; it reads every tenant once it catches up.
                        let _ = wakes.send(Wake::All).await;
                    }
                }
                Ok(None) => {
                    tracing::info!("feed notification connection lost; reconnecting");
                    let _ = wakes.try_send(Wake::All);
                }
                Err(error) => {
                    tracing::warn!(error = %error, "feed notifications failed; reconnecting");
                    break;
                }
            }
        }
    }
}

/// The tailer: reads dirty tenants and publishes their batches.
async fn tail(inner: Arc<Inner>, mut woken: mpsc::Receiver<Wake>) {
    let poll_interval = inner.settings.poll_interval.max(Duration::from_millis(1));
    let mut poll = tokio::time::interval(poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty: HashSet<TenantId> = HashSet::new();
    // The greatest ordering key each tenant's notifications named.
    let mut notified: HashMap<TenantId, u64> = HashMap::new();
    let mut everyone = false;
    // Tenants held back by an open transaction: when to read them again, and the next delay.
    let mut retries: HashMap<TenantId, (Instant, Duration)> = HashMap::new();
    loop {
        let next_retry = retries.values().map(|(at, _)| *at).min();
        tokio::select! {
            () = inner.stop.cancelled() => break,
            wake = woken.recv() => match wake {
                Some(Wake::Tenant(payload)) => note(&payload, &mut dirty, &mut notified),
                Some(Wake::All) => everyone = true,
                None => break,
            },
            () = inner.arrived.notified() => {
                dirty.extend(lock(&inner.arrivals).drain());
            }
            _ = poll.tick() => everyone = true,
            () = sleep_until(next_retry) => {
                let now = Instant::now();
                dirty.extend(retries.iter().filter(|(_, (at, _))| *at <= now).map(|(tenant, _)| tenant.clone()));
            }
        }
        // Take whatever else is already queued, so a burst costs one read per tenant.
        while let Ok(wake) = woken.try_recv() {
            match wake {
                Wake::Tenant(payload) => note(&payload, &mut dirty, &mut notified),
                Wake::All => everyone = true,
            }
        }
        if std::mem::take(&mut everyone) {
            dirty.extend(lock(&inner.tenants).keys().cloned());
        }
        for tenant in std::mem::take(&mut dirty) {
            let waiting_for = notified.get(&tenant).copied();
            match inner.publish(&tenant, waiting_for).await {
                Ok(Publish::HeldBack) => {
                    let delay = retries
                        .get(&tenant)
                        .map_or(HELD_BACK_FIRST_RETRY, |(_, delay)| {
                            (*delay * 2).min(HELD_BACK_LAST_RETRY)
                        });
                    retries.insert(tenant, (Instant::now() + delay, delay));
                }
                Ok(Publish::UpToDate) => {
                    retries.remove(&tenant);
                    notified.remove(&tenant);
                }
                Err(error) => {
                    tracing::warn!(tenant = %tenant, error = %error, "cannot read the feed; retrying");
                    retries.insert(tenant, (Instant::now() + poll_interval, poll_interval));
                }
            }
        }
    }
    // Closing the channels ends the live streams (they end with UNAVAILABLE on shutdown).
    lock(&inner.tenants).clear();
}

/// Marks the tenant of a notification dirty and remembers the key it named.
fn note(payload: &str, dirty: &mut HashSet<TenantId>, notified: &mut HashMap<TenantId, u64>) {
    let (tenant, key) = match payload.split_once(' ') {
        Some((tenant, key)) => (tenant, key.parse::<u64>().ok()),
        None => (payload, None),
    };
    let Ok(tenant) = TenantId::parse(tenant) else {
        return;
    };
    if let Some(key) = key {
        let known = notified.entry(tenant.clone()).or_insert(key);
        *known = (*known).max(key);
    }
    dirty.insert(tenant);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

enum Publish {
    UpToDate,
    HeldBack,
}

impl Inner {
    /// Reads the tenant's feed from its head to the watermark and publishes it, batch by batch.
    /// Held back when the watermark has not yet passed `waiting_for`, a key a notification named.
    async fn publish(
        &self,
        tenant: &TenantId,
        waiting_for: Option<u64>,
    ) -> Result<Publish, DbError> {
        loop {
            let head = {
                let mut tenants = lock(&self.tenants);
                match tenants.get(tenant) {
                    Some(tail) if tail.sender.receiver_count() > 0 => tail.head,
                    Some(_) => {
                        // Its last stream has gone: stop watching until the next one comes.
                        tenants.remove(tenant);
                        return Ok(Publish::UpToDate);
                    }
                    None => return Ok(Publish::UpToDate),
                }
            };
            let page = feed::read_page(
                &self.pool,
                tenant,
                head,
                BATCH_ROWS,
                &FeedSelection::default(),
            )
            .await?;
            let full = page.full;
            let held_back = waiting_for.is_some_and(|key| page.next.tx <= key);
            if page.next > head {
                let events = event::load(&self.pool, tenant, page.rows).await?;
                if let Some(newest) = events.last() {
                    let lag = chrono::Utc::now() - newest.time;
                    crate::metrics::global().set_feed_lag(lag.as_seconds_f64());
                }
                let batch = Arc::new(Batch {
                    from: head,
                    to: page.next,
                    events,
                });
                let mut tenants = lock(&self.tenants);
                if let Some(tail) = tenants.get_mut(tenant)
                    && tail.head == head
                {
                    tail.head = batch.to;
                    // No receiver left is not an error: the next pass drops the tail.
                    let _ = tail.sender.send(batch);
                }
            }
            if !full {
                if !held_back {
                    // Caught up: nothing committed waits to be delivered.
                    crate::metrics::global().set_feed_lag(0.0);
                }
                return Ok(if held_back {
                    Publish::HeldBack
                } else {
                    Publish::UpToDate
                });
            }
        }
    }
}
