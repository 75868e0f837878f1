//! One WatchCalls stream: a task that sends the snapshot (when asked), catches up from the
//! database by the stream's own cursor, then follows the tailer's batches, filtering them; and
//! the response stream that carries its messages and, at the end, its status.
//!
//! Sends wait at most `stuck_timeout` for the consumer: a stream that cannot take a message for
//! that long is ended with UNAVAILABLE (reason SLOW_CONSUMER) and resumes by cursor. A stream
//! that merely lags behind the tailer loses its place in the broadcast channel and reads the
//! database instead, so it never holds up ingest or the other streams.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::Status;
use uuid::Uuid;

use crate::db::DbError;
use crate::db::calls_read::{self, CallEmbed};
use crate::db::feed;
use crate::domain::TenantId;
use crate::error::ApiError;
use crate::feed::cursor::{Cursor, Position};
use crate::feed::event::{self, Event, WatchFilter, to_basic};
use crate::feed::hub::{Batch, Hub};
use crate::feed::wire::Outgoing;
use crate::proto::{CallEventKind, WatchCallsResponse};

/// Rows a stream reads from the database at once while it catches up.
const CATCH_UP_ROWS: usize = 256;
/// Calls a snapshot reads at once.
const SNAPSHOT_CALLS: usize = 200;

/// Where a stream starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Strictly after this cursor.
    After(Cursor),
    /// At the current watermark.
    Now,
    /// The matching calls as they are now, then everything after.
    Snapshot,
}

/// A validated WatchCalls request.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    pub tenant: TenantId,
    pub filter: WatchFilter,
    pub start: Start,
    pub view: CallEmbed,
    pub heartbeat_interval: Duration,
}

/// Why a stream ended early, as the client sees it.
#[derive(Debug)]
enum End {
    ShuttingDown,
    SlowConsumer,
    Expired,
    Failed(DbError),
}

/// The response stream of one WatchCalls call.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Outgoing, Status>> + Send>>;

/// Checks where the request starts, then starts the stream's task. A cursor of this tenant
/// that this database cannot have written, or one older than retention, is refused here, before
/// any message.
pub async fn watch(hub: &Hub, request: WatchRequest) -> Result<WatchStream, ApiError> {
    let (begin, first_cursor) = match &request.start {
        Start::After(cursor) => {
            let now = feed::current_snapshot(hub.pool()).await?;
            // Every event and watermark this database has handed out is at or before the
            // watermark of its next transaction id.
            if cursor.position > Position::watermark(now.xmax) {
                return Err(ApiError::invalid_field(
                    "from_cursor",
                    "is ahead of this database's feed (a cursor of another deployment?)",
                ));
            }
            if feed::horizon(hub.pool(), &request.tenant)
                .await?
                .is_some_and(|horizon| cursor.position < horizon)
            {
                return Err(expired(hub));
            }
            (Some(cursor.clone()), cursor.encode(&request.tenant))
        }
        Start::Now => {
            // Now is fixed before the client sees the stream start: after every transaction
            // that has committed, skipping those above the watermark that the snapshot saw.
            let now = feed::current_snapshot(hub.pool()).await?;
            let mut cursor = Cursor {
                position: Position::watermark(now.xmin),
                snapshot: Some(now),
            };
            cursor.advance(cursor.position);
            let text = cursor.encode(&request.tenant);
            (Some(cursor), text)
        }
        Start::Snapshot => (None, String::new()),
    };
    let (messages, received) = mpsc::channel(hub.settings().send_buffer.max(1));
    let expired_message = expired_message(hub);
    let (ended, end) = oneshot::channel();
    let task = Task {
        hub: hub.clone(),
        begin,
        messages,
        heartbeat_interval: request.heartbeat_interval,
        last_sent: Instant::now(),
        request,
    };
    tokio::spawn(async move {
        let mut task = task;
        if let Some(end) = task.run().await {
            match &end {
                (End::Failed(error), _) => {
                    tracing::warn!(tenant = %task.request.tenant, error = %error, "watch stream failed")
                }
                (reason, _) => {
                    tracing::debug!(tenant = %task.request.tenant, ?reason, "watch stream ended")
                }
            }
            // The end goes first: once the task's sender is dropped the response stream looks
            // for it.
            let _ = ended.send(end);
        }
        drop(task);
    });
    Ok(Box::pin(ResponseStream {
        received,
        end: Some(end),
        pending_end: None,
        last_cursor: Arc::from(first_cursor),
        expired_message,
        done: false,
    }))
}

fn expired_message(hub: &Hub) -> String {
    let days = hub.settings().retention.as_secs_f64() / 86_400.0;
    format!(
        "the cursor is older than the feed's retention ({days:.3} days): events after it were \
         pruned; start again with a snapshot"
    )
}

fn expired(hub: &Hub) -> ApiError {
    ApiError::CursorExpired(expired_message(hub))
}

struct Task {
    hub: Hub,
    /// Where the stream starts: after this cursor, or (`None`) with a snapshot.
    begin: Option<Cursor>,
    request: WatchRequest,
    messages: mpsc::Sender<Outgoing>,
    heartbeat_interval: Duration,
    last_sent: Instant,
}

/// The reason a stream ended, and whether the messages already queued go out first.
type Ending = (End, bool);

impl Task {
    /// Runs the stream until the client goes (`None`) or it must end with a status.
    async fn run(&mut self) -> Option<Ending> {
        let stop = self.hub.stopping().clone();
        let closed = self.messages.clone();
        tokio::select! {
            () = stop.cancelled() => Some((End::ShuttingDown, true)),
            () = closed.closed() => None,
            ending = self.follow() => ending,
        }
    }

    async fn follow(&mut self) -> Option<Ending> {
        let mut cursor = match self.begin.clone() {
            Some(cursor) => cursor,
            None => match self.snapshot().await {
                Ok(Some(cursor)) => cursor,
                Ok(None) => return None,
                Err(end) => return Some(end),
            },
        };
        loop {
            let mut live = match self.hub.subscribe(&self.request.tenant).await {
                Ok(live) => live,
                Err(error) => return Some((End::Failed(error), false)),
            };
            if let Err(ending) = self.catch_up(&mut cursor, live.head).await {
                return ending;
            }
            // Live: follow the tailer until it leaves us behind.
            loop {
                let heartbeat = self.last_sent + self.heartbeat_interval;
                let received = tokio::select! {
                    received = live.batches.recv() => received,
                    () = tokio::time::sleep_until(heartbeat) => {
                        if let Err(ending) = self.send_heartbeat(&cursor).await {
                            return ending;
                        }
                        continue;
                    }
                };
                match received {
                    Ok(batch) => {
                        if batch.to <= cursor.position {
                            continue;
                        }
                        if batch.from > cursor.position {
                            // A gap: the batches in between went out before we subscribed.
                            break;
                        }
                        if let Err(ending) = self.deliver_batch(&mut cursor, &batch).await {
                            return ending;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(tenant = %self.request.tenant, missed,
                            "watch stream fell behind the tailer; reading the database");
                        break;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        return Some((End::ShuttingDown, true));
                    }
                }
            }
        }
    }

    /// Reads the database from the cursor until it has reached `head`, where the tailer's
    /// batches start.
    async fn catch_up(
        &mut self,
        cursor: &mut Cursor,
        head: Position,
    ) -> Result<(), Option<Ending>> {
        let selection = self.request.filter.selection();
        loop {
            let page = feed::read_page(
                self.hub.pool(),
                &self.request.tenant,
                cursor.position,
                CATCH_UP_ROWS,
                &selection,
            )
            .await
            .map_err(|error| Some((End::Failed(error), false)))?;
            if page
                .horizon
                .is_some_and(|horizon| cursor.position < horizon)
            {
                return Err(Some((End::Expired, false)));
            }
            let events = event::load(self.hub.pool(), &self.request.tenant, page.rows)
                .await
                .map_err(|error| Some((End::Failed(error), false)))?;
            for event in &events {
                self.deliver(cursor, event).await?;
            }
            cursor.advance(page.next);
            // A long catch-up that the filter rejects keeps the consumer's resume point moving.
            if Instant::now() >= self.last_sent + self.heartbeat_interval {
                self.send_heartbeat(cursor).await?;
            }
            // Watermarks only grow and this read came after the tailer's, so a page that is not
            // full reaches the head. Were it short, the first live batch would show a gap and
            // send the stream back here.
            if !page.full {
                debug_assert!(cursor.position >= head, "caught up short of the tailer");
                return Ok(());
            }
        }
    }

    async fn deliver_batch(
        &mut self,
        cursor: &mut Cursor,
        batch: &Batch,
    ) -> Result<(), Option<Ending>> {
        for event in &batch.events {
            if event.position > cursor.position {
                self.deliver(cursor, event).await?;
            }
        }
        cursor.advance(batch.to);
        Ok(())
    }

    /// Sends the event if the stream wants it, and moves the cursor past it either way.
    async fn deliver(
        &mut self,
        cursor: &mut Cursor,
        event: &Arc<Event>,
    ) -> Result<(), Option<Ending>> {
        if event.position <= cursor.position {
            return Ok(());
        }
        let seen = cursor.already_seen(event.writer_tx);
        cursor.advance(event.position);
        if seen || !self.request.filter.matches(event) {
            return Ok(());
        }
        let own_cursor = cursor
            .snapshot
            .is_some()
            .then(|| cursor.encode(&self.request.tenant));
        let message = event.message_for(self.request.view, own_cursor);
        self.send(message).await
    }

    async fn send_heartbeat(&mut self, cursor: &Cursor) -> Result<(), Option<Ending>> {
        self.send(Outgoing::encode(&WatchCallsResponse {
            kind: CallEventKind::Heartbeat as i32,
            cursor: cursor.encode(&self.request.tenant),
            ..WatchCallsResponse::default()
        }))
        .await
    }

    async fn send(&mut self, message: Outgoing) -> Result<(), Option<Ending>> {
        let stuck_timeout = self.hub.settings().stuck_timeout;
        match self.messages.send_timeout(message, stuck_timeout).await {
            Ok(()) => {
                self.last_sent = Instant::now();
                Ok(())
            }
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(Some((End::SlowConsumer, false))),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(None),
        }
    }

    /// Sends every matching call as of one database snapshot, then SNAPSHOT_COMPLETE with the
    /// cursor where the tail starts: after every transaction the snapshot saw, and skipping the
    /// ones it saw above that point. Returns that cursor, or `None` when the client went.
    async fn snapshot(&mut self) -> Result<Option<Cursor>, Ending> {
        let failed = |error: DbError| (End::Failed(error), false);
        let (mut transaction, seen) = feed::begin_snapshot(self.hub.pool(), &self.request.tenant)
            .await
            .map_err(failed)?;
        let filter = self.request.filter.snapshot_filter();
        let mut after: Option<Uuid> = None;
        loop {
            let ids = feed::snapshot_page(
                &mut transaction,
                &self.request.tenant,
                &filter,
                after,
                SNAPSHOT_CALLS,
            )
            .await
            .map_err(failed)?;
            let Some(last) = ids.last() else { break };
            after = Some(*last);
            let reads = calls_read::load_calls_on(
                &mut transaction,
                &self.request.tenant,
                &ids,
                CallEmbed::Full,
            )
            .await
            .map_err(failed)?;
            for read in reads {
                let call_id = read.call.id.to_string();
                let call_version = read.call.version;
                let mut call = crate::api::convert_read::call_to_proto(read);
                if self.request.view == CallEmbed::Basic {
                    to_basic(&mut call);
                }
                let message = WatchCallsResponse {
                    kind: CallEventKind::Snapshot as i32,
                    call: Some(call),
                    call_id,
                    call_version,
                    ..WatchCallsResponse::default()
                };
                match self.send(Outgoing::encode(&message)).await {
                    Ok(()) => {}
                    Err(None) => return Ok(None),
                    Err(Some(end)) => return Err(end),
                }
            }
            if ids.len() < SNAPSHOT_CALLS {
                break;
            }
        }
        transaction
            .commit()
            .await
            .map_err(|error| failed(error.into()))?;
        let cursor = Cursor {
            position: Position::watermark(seen.xmin),
            snapshot: Some(seen),
        };
        let mut cursor_after = cursor.clone();
        cursor_after.advance(cursor.position);
        let complete = WatchCallsResponse {
            kind: CallEventKind::SnapshotComplete as i32,
            cursor: cursor_after.encode(&self.request.tenant),
            ..WatchCallsResponse::default()
        };
        match self.send(Outgoing::encode(&complete)).await {
            Ok(()) => Ok(Some(cursor_after)),
            Err(None) => Ok(None),
            Err(Some(end)) => Err(end),
        }
    }
}

/// Carries the task's messages, then its end as a status with the last cursor this stream
/// handed out, so the client can resume from it.
struct ResponseStream {
    received: mpsc::Receiver<Outgoing>,
    end: Option<oneshot::Receiver<Ending>>,
    pending_end: Option<End>,
    last_cursor: Arc<str>,
    expired_message: String,
    done: bool,
}

impl ResponseStream {
    fn status(&self, end: End) -> Status {
        let error = match end {
            End::ShuttingDown => ApiError::StreamEnded {
                reason: "SHUTTING_DOWN",
                message: "the server is shutting down; resume from the cursor on another replica"
                    .to_owned(),
                cursor: self.last_cursor.to_string(),
            },
            End::SlowConsumer => ApiError::StreamEnded {
                reason: "SLOW_CONSUMER",
                message: "the stream was not read for too long; resume from the cursor".to_owned(),
                cursor: self.last_cursor.to_string(),
            },
            End::Expired => ApiError::CursorExpired(self.expired_message.clone()),
            End::Failed(error) => ApiError::from(error),
        };
        Status::from(error)
    }

    fn finish(&mut self, end: End) -> Poll<Option<Result<Outgoing, Status>>> {
        self.done = true;
        Poll::Ready(Some(Err(self.status(end))))
    }
}

impl Stream for ResponseStream {
    type Item = Result<Outgoing, Status>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(end) = self.end.as_mut()
            && let Poll::Ready(ending) = Pin::new(end).poll(context)
        {
            self.end = None;
            if let Ok((end, drain)) = ending {
                if !drain {
                    // The consumer is not reading: what is queued is dropped, it resumes by
                    // the cursor of the last message it received.
                    return self.finish(end);
                }
                self.pending_end = Some(end);
            }
        }
        match self.received.poll_recv(context) {
            Poll::Ready(Some(message)) => {
                if !message.cursor().is_empty() {
                    self.last_cursor = message.cursor().clone();
                }
                Poll::Ready(Some(Ok(message)))
            }
            Poll::Ready(None) => {
                // The task sends its end before it drops its sender.
                let end = self.pending_end.take().or_else(|| {
                    self.end
                        .take()
                        .and_then(|mut end| end.try_recv().ok())
                        .map(|(end, _)| end)
                });
                match end {
                    Some(end) => self.finish(end),
                    None => {
                        self.done = true;
                        Poll::Ready(None)
                    }
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
