//! The session log of a relay in a fleet: JetStream sequences and keeps
//! every delta; each relay holds a replica of the sessions it hosts.
//!
//! - **Append**: a validated frame is published to its session's stream
//!   (one stream per session, so the stream sequence *is* the session `seq`)
//!   with the message id `origin:client_seq`, so a resend is stored once. The
//!   sender's `Ack` waits for JetStream's acknowledgement; a failed publish
//!   is retried with the same id (never stored twice) until
//!   [`StreamLimits::retry_for`] runs out, and only then refused.
//! - **Delivery**: for every session with local peers, an ordered consumer
//!   reads the stream in seq order into the local [`MemoryLog`] replica and
//!   wakes the shards, so every relay delivers the same deltas in the same
//!   order, its own peers' included. The relay re-validates and stamps each
//!   delta it delivers (it is the validator its peers see, and signs as such).
//! - **Resume**: tokens are an HMAC of session and origin under a key all
//!   relays share, so a peer may resume on any relay; what the origin stored
//!   last comes from the replica, which is caught up before peers are welcomed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::header::HeaderName;
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use aws_lc_rs::hmac;
use bytes::Bytes;
use deltamesh_proto::trace::{self, attribute};
use deltamesh_proto::{DeltaFrame, Id, fleet};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use opentelemetry::global::{self, BoxedSpan};
use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::log::{Acceptance, AckTo, Appended, DeltaLog, LogError, MemoryLog, stamp};
use crate::signing::DeltaSigner;
use crate::store::{ChunkStore, StoredDelta};
use crate::wake::{LogAck, ShardWake};
use deltamesh_proto::time::unix_micros;

/// Wait between attempts to follow a session's stream again after an error.
const FOLLOW_RETRY: Duration = Duration::from_millis(250);
/// The header names read on every replicated delta, made once.
const ORIGIN: HeaderName = HeaderName::from_static(fleet::ORIGIN_HEADER);
const TRACEPARENT: HeaderName = HeaderName::from_static(trace::TRACEPARENT);
/// First wait before retrying a failed publish; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between publish attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What each session's stream keeps, and how long publishes are retried.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Deltas kept per session (the oldest go first).
    pub max_msgs: i64,
    /// Bytes kept per session.
    pub max_bytes: i64,
    /// How long a delta is kept.
    pub max_age: Duration,
    /// How long JetStream remembers message ids: a resend within it is
    /// stored once.
    pub duplicate_window: Duration,
    /// How long a failed publish is retried before the sender gets
    /// `Reject{UNAVAILABLE}`; keep it well inside `duplicate_window`.
    pub retry_for: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_msgs: 1_000_000,
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(24 * 3600),
            duplicate_window: Duration::from_secs(120),
            retry_for: Duration::from_secs(60),
        }
    }
}

/// How the log reports on the deltas it publishes.
#[derive(Debug, Clone)]
pub struct LogTelemetry {
    /// Observes the time from publishing a delta to JetStream's ack,
    /// retries included.
    pub publish_seconds: Histogram,
    /// One published delta in this many gets a trace: a span for its
    /// publish and one on every relay replicating it (0: none).
    pub trace_every: u64,
}

/// A delta on its way to JetStream.
struct Publish {
    subject: String,
    msg_id: String,
    origin: Id,
    frame: Bytes,
    client_seq: u64,
    ack_to: AckTo,
}

/// One session followed into the replica.
struct Feed {
    /// `watch` calls not yet undone (one per local peer).
    watchers: usize,
    /// The replica holds everything the stream had when following began.
    current: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

struct Inner {
    replica: MemoryLog,
    js: jetstream::Context,
    relay_id: Id,
    signer: Option<Arc<DeltaSigner>>,
    limits: StreamLimits,
    telemetry: LogTelemetry,
    /// Deltas published, for sampling their traces.
    published: AtomicU64,
}

/// The JetStream-backed [`DeltaLog`]. Create it inside a Tokio runtime.
pub struct JetStreamLog {
    inner: Arc<Inner>,
    resume_key: hmac::Key,
    publishes: mpsc::UnboundedSender<Publish>,
    feeds: Mutex<HashMap<Arc<str>, Feed>>,
    pending: Arc<AtomicUsize>,
}

impl JetStreamLog {
    /// A log publishing through `js`, replicating into `store`, stamping
    /// delivered deltas as `relay_id` (signed with `signer` if any), and
    /// issuing resume tokens under the fleet's shared `resume_secret`.
    pub fn new(
        js: jetstream::Context,
        store: Arc<ChunkStore>,
        relay_id: Id,
        signer: Option<Arc<DeltaSigner>>,
        resume_secret: &[u8],
        limits: StreamLimits,
        telemetry: LogTelemetry,
    ) -> Self {
        let inner = Arc::new(Inner {
            replica: MemoryLog::new(store),
            js,
            relay_id,
            signer,
            limits,
            telemetry,
            published: AtomicU64::new(0),
        });
        let (publishes, queue) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        tokio::spawn(publisher(Arc::clone(&inner), queue, Arc::clone(&pending)));
        JetStreamLog {
            inner,
            resume_key: hmac::Key::new(hmac::HMAC_SHA256, resume_secret),
            publishes,
            feeds: Mutex::new(HashMap::new()),
            pending,
        }
    }

    /// Deltas published and not yet acknowledged by JetStream.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    fn feeds(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Feed>> {
        self.feeds.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn resume_token(&self, session: &str, origin: Id) -> [u8; 16] {
        let mut context = hmac::Context::with_key(&self.resume_key);
        context.update(session.as_bytes());
        context.update(&[0]);
        context.update(origin.as_bytes());
        let tag = context.sign();
        let mut token = [0u8; 16];
        token.copy_from_slice(&tag.as_ref()[..16]);
        token
    }
}

impl Drop for JetStreamLog {
    fn drop(&mut self) {
        for feed in self.feeds().values() {
            feed.task.abort();
        }
    }
}

impl DeltaLog for JetStreamLog {
    fn append(
        &self,
        session: &Arc<str>,
        by: Acceptance<'_>,
        frame: DeltaFrame<'_>,
        ack_to: &AckTo,
    ) -> Result<Appended, LogError> {
        let client_seq = frame.client_seq();
        if let Some(known) = self.inner.replica.resend(session, by.origin, client_seq) {
            return known.map(Appended::Duplicate);
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        let publish = Publish {
            subject: fleet::deltas_subject(session),
            msg_id: fleet::delta_msg_id(by.origin, client_seq),
            origin: by.origin,
            frame: Bytes::copy_from_slice(frame.as_bytes()),
            client_seq,
            ack_to: ack_to.clone(),
        };
        if self.publishes.send(publish).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(LogError::Unavailable("the publisher stopped".into()));
        }
        Ok(Appended::Pending)
    }

    fn head(&self, session: &str) -> u64 {
        self.inner.replica.head(session)
    }

    fn is_current(&self, session: &str) -> bool {
        self.feeds()
            .get(session)
            .is_some_and(|feed| feed.current.load(Ordering::Acquire))
    }

    fn issue_resume_token(&self, session: &Arc<str>, origin: Id) -> [u8; 16] {
        self.resume_token(session, origin)
    }

    fn claim_origin(&self, session: &str, origin: Id, resume_token: &[u8]) -> Option<u64> {
        let expected = self.resume_token(session, origin);
        if !crate::log::constant_time_eq(&expected, resume_token) {
            return None;
        }
        // An origin that stored nothing is not known here; its peer starts
        // afresh, which loses nothing.
        self.inner.replica.last_client_seq(session, origin)
    }

    fn read(
        &self,
        session: &str,
        from: u64,
        max: usize,
        out: &mut Vec<StoredDelta>,
    ) -> Result<(), LogError> {
        self.inner.replica.read(session, from, max, out)
    }

    fn watch(&self, session: &Arc<str>, shard: &Arc<ShardWake>) {
        self.inner.replica.watch(session, shard);
        let mut feeds = self.feeds();
        let feed = feeds.entry(Arc::clone(session)).or_insert_with(|| {
            let current = Arc::new(AtomicBool::new(false));
            let task = tokio::spawn(follow(
                Arc::clone(&self.inner),
                Arc::clone(session),
                Arc::clone(&current),
            ));
            Feed {
                watchers: 0,
                current,
                task,
            }
        });
        feed.watchers += 1;
    }

    fn unwatch(&self, session: &Arc<str>, shard: &Arc<ShardWake>) {
        self.inner.replica.unwatch(session, shard);
        let mut feeds = self.feeds();
        if let Some(feed) = feeds.get_mut(session) {
            feed.watchers -= 1;
            if feed.watchers == 0 {
                feed.task.abort();
                feeds.remove(session);
            }
        }
    }
}

/// The configuration of a session's stream.
fn stream_config(session: &str, limits: &StreamLimits) -> stream::Config {
    stream::Config {
        name: fleet::deltas_stream(session),
        subjects: vec![fleet::deltas_subject(session)],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_messages: limits.max_msgs,
        max_bytes: limits.max_bytes,
        max_age: limits.max_age,
        duplicate_window: limits.duplicate_window,
        ..stream::Config::default()
    }
}

/// Follows a session's stream into the replica for as long as the session
/// is watched (the task is aborted then), starting over after errors.
async fn follow(inner: Arc<Inner>, session: Arc<str>, current: Arc<AtomicBool>) {
    loop {
        if let Err(error) = follow_once(&inner, &session, &current).await {
            tracing::warn!(%session, %error, "following the session's stream; retrying");
        }
        tokio::time::sleep(FOLLOW_RETRY).await;
    }
}

async fn follow_once(
    inner: &Inner,
    session: &Arc<str>,
    current: &AtomicBool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut stream = inner
        .js
        .get_or_create_stream(stream_config(session, &inner.limits))
        .await?;
    let last = stream.info().await?.state.last_sequence;
    let from = inner.replica.head(session) + 1;
    if last < from && !current.swap(true, Ordering::AcqRel) {
        inner.replica.wake_watchers(session);
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..consumer::pull::OrderedConfig::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let seq = message.info()?.stream_sequence;
        if seq >= last {
            // Set before the delta wakes the shards, so they see it current.
            current.store(true, Ordering::Release);
        }
        ingest(inner, session, seq, &message)?;
    }
    Err("the stream's consumer ended".into())
}

/// Re-validates one delta from the stream and stores it in the replica.
fn ingest(
    inner: &Inner,
    session: &Arc<str>,
    seq: u64,
    message: &async_nats::Message,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let frame = DeltaFrame::parse(&message.payload)
        .map_err(|error| format!("seq {seq} of {session} is not a valid frame: {error}"))?;
    let headers = message
        .headers
        .as_ref()
        .ok_or_else(|| format!("seq {seq} of {session} has no headers"))?;
    let origin = headers
        .get(ORIGIN)
        .and_then(|value| value.as_str().parse::<Id>().ok())
        .ok_or_else(|| format!("seq {seq} of {session} names no origin"))?;
    trace_replication(inner, session, seq, headers);
    let by = Acceptance {
        origin,
        validator: inner.relay_id,
        validated_at_us: unix_micros(),
        signer: inner.signer.as_deref(),
    };
    inner
        .replica
        .insert(session, &stamp(seq, by, frame), frame)?;
    Ok(())
}

/// Publishes deltas as they come, many in flight at once.
async fn publisher(
    inner: Arc<Inner>,
    mut queue: mpsc::UnboundedReceiver<Publish>,
    pending: Arc<AtomicUsize>,
) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            publish = queue.recv() => match publish {
                Some(publish) => in_flight.push(publish_until_stored(&inner, publish)),
                None => break,
            },
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {
                pending.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
    while in_flight.next().await.is_some() {}
}

/// Publishes one delta, retrying with the same message id until JetStream
/// acknowledges it or `retry_for` runs out, and hands the verdict to the
/// sender's shard.
async fn publish_until_stored(inner: &Inner, publish: Publish) {
    let started = Instant::now();
    let deadline = started + inner.limits.retry_for;
    let mut backoff = FIRST_BACKOFF;
    let mut span = sampled_span(inner, &publish);
    let trace_headers = span
        .as_ref()
        .map(|span| {
            let context = span.span_context().clone();
            trace::inject(&Context::new().with_remote_span_context(context))
        })
        .unwrap_or_default();
    let outcome = loop {
        let mut message = PublishMessage::build()
            .message_id(&publish.msg_id)
            .header(fleet::ORIGIN_HEADER, publish.origin.to_string().as_str());
        for (name, value) in &trace_headers {
            message = message.header(*name, value.as_str());
        }
        let message = message.payload(publish.frame.clone());
        let attempt = async {
            inner
                .js
                .send_publish(publish.subject.clone(), message)
                .await?
                .await
        };
        match attempt.await {
            Ok(ack) => break Ok(ack.sequence),
            Err(error) if Instant::now() + backoff < deadline => {
                tracing::debug!(subject = %publish.subject, %error, "publish failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(error) => break Err(format!("the delta store is unavailable: {error}")),
        }
    };
    match &outcome {
        Ok(seq) => {
            let took = started.elapsed().as_secs_f64();
            inner.telemetry.publish_seconds.observe(took);
            if let Some(span) = &mut span {
                let seq = i64::try_from(*seq).unwrap_or(i64::MAX);
                span.set_attribute(KeyValue::new("deltamesh.seq", seq));
            }
        }
        Err(error) => {
            if let Some(span) = &mut span {
                span.set_status(Status::error(error.clone()));
            }
        }
    }
    publish.ack_to.shard.push_ack(LogAck {
        peer: publish.ack_to.peer,
        client_seq: publish.client_seq,
        outcome,
    });
}

/// A span for publishing this delta, if it is one of the sampled ones.
fn sampled_span(inner: &Inner, publish: &Publish) -> Option<BoxedSpan> {
    let every = inner.telemetry.trace_every;
    if every == 0
        || !inner
            .published
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(every)
    {
        return None;
    }
    let tracer = global::tracer("deltamesh-relay");
    let span = tracer
        .span_builder("publish delta")
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("messaging.destination.name", publish.subject.clone()),
            KeyValue::new(attribute::PEER_ID, publish.origin.to_string()),
            KeyValue::new(attribute::RELAY_ID, inner.relay_id.to_string()),
        ])
        .start(&tracer);
    Some(span)
}

/// A span for replicating a delta whose publish was traced (its message
/// carries trace headers); ended at once.
fn trace_replication(inner: &Inner, session: &str, seq: u64, headers: &async_nats::HeaderMap) {
    if headers.get(TRACEPARENT).is_none() {
        return;
    }
    let parent = trace::extract(|name| Some(headers.get(name)?.as_str()));
    let tracer = global::tracer("deltamesh-relay");
    tracer
        .span_builder("replicate delta")
        .with_kind(SpanKind::Consumer)
        .with_attributes([
            KeyValue::new(attribute::SESSION, session.to_owned()),
            KeyValue::new(attribute::RELAY_ID, inner.relay_id.to_string()),
            KeyValue::new("deltamesh.seq", i64::try_from(seq).unwrap_or(i64::MAX)),
        ])
        .start_with_context(&tracer, &parent)
        .end();
}
