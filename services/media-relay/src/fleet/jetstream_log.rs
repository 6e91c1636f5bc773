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
//! - **Large deltas** (longer than [`PART_SIZE`], up to
//!   `max_delta_size`, PROTOCOL §6): NATS takes messages of at most
//!   `max_payload` (1 MiB by default), so the frame goes first as parts of
//!   [`PART_SIZE`] to the fleet's one parts stream (each with its own
//!   message id, so a retried part is stored once), then its session's
//!   stream gets the ordered message that takes the seq: the frame header
//!   and the parts' sequences (`Dm-Parts`). A follower fetches the parts
//!   by sequence, checks they are this delta's, and validates the whole
//!   frame (CRC included) before it stores it, once.
//! - **Back-pressure**: at most [`StreamLimits::max_pending`] deltas and
//!   [`StreamLimits::max_pending_bytes`] bytes wait for JetStream at once
//!   (queued or in flight); beyond either, `append` refuses at once with
//!   [`LogError::Unavailable`] (the sender's `Reject{UNAVAILABLE}`: send it
//!   again later), so a NATS outage holds the relay's memory at that bound.
//! - **Idle sessions**: a session's replica outlives its last local peer by
//!   [`StreamLimits::replica_idle`] (a quick reconnect finds it caught up),
//!   then is forgotten; a later peer has it replayed from the stream.
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
use deltamesh_proto::frame::FRAME_HEADER_LEN;
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
/// The largest frame published as one message, and the size of each part
/// of a larger one: well inside NATS's default 1 MiB `max_payload`, also
/// once a part is base64 in a JetStream API reply (a follower's fetch).
pub const PART_SIZE: usize = 256 * 1024;
/// The most parts a large delta may name (a 4 GiB frame).
const MAX_PARTS: usize = (u32::MAX as usize).div_ceil(PART_SIZE);
const PARTS: HeaderName = HeaderName::from_static(fleet::PARTS_HEADER);

/// What each session's stream keeps, and how long publishes are retried.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Deltas kept per session (the oldest go first).
    pub max_msgs: i64,
    /// Bytes kept per session.
    pub max_bytes: i64,
    /// Bytes of large deltas' parts kept, for all sessions together.
    pub parts_max_bytes: i64,
    /// How long a delta is kept.
    pub max_age: Duration,
    /// How long JetStream remembers message ids: a resend within it is
    /// stored once.
    pub duplicate_window: Duration,
    /// How long a failed publish is retried before the sender gets
    /// `Reject{UNAVAILABLE}`; keep it well inside `duplicate_window`.
    pub retry_for: Duration,
    /// The most deltas waiting for JetStream's acknowledgement at once,
    /// queued or in flight, for the whole relay; one more is refused.
    pub max_pending: usize,
    /// The most frame bytes waiting for JetStream at once; a delta that
    /// would pass it is refused (one larger than it alone is taken only
    /// when nothing else waits).
    pub max_pending_bytes: usize,
    /// How long a session's replica is kept after its last local peer
    /// left, before its memory is freed.
    pub replica_idle: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_msgs: 1_000_000,
            max_bytes: 1 << 30,
            parts_max_bytes: 1 << 30,
            max_age: Duration::from_secs(24 * 3600),
            duplicate_window: Duration::from_secs(120),
            retry_for: Duration::from_secs(60),
            max_pending: 16_384,
            max_pending_bytes: 64 << 20,
            replica_idle: Duration::from_secs(60),
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
    /// Where its parts go, when it is published in parts.
    parts_subject: Option<String>,
    msg_id: String,
    origin: Id,
    frame: Bytes,
    client_seq: u64,
    ack_to: AckTo,
}

/// The sessions followed into the replica, and those waiting to be
/// forgotten.
#[derive(Default)]
struct Feeds {
    following: HashMap<Arc<str>, Feed>,
    /// Sessions without local peers, each with the timer that forgets its
    /// replica after [`StreamLimits::replica_idle`].
    idle: HashMap<Arc<str>, JoinHandle<()>>,
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
    /// The parts stream is known to exist.
    parts_ready: AtomicBool,
}

/// The JetStream-backed [`DeltaLog`]. Create it inside a Tokio runtime.
pub struct JetStreamLog {
    inner: Arc<Inner>,
    resume_key: hmac::Key,
    publishes: mpsc::UnboundedSender<Publish>,
    feeds: Arc<Mutex<Feeds>>,
    backlog: Arc<Backlog>,
}

/// The deltas waiting for JetStream (queued or in flight), held within
/// [`StreamLimits::max_pending`] and [`StreamLimits::max_pending_bytes`].
struct Backlog {
    max_deltas: usize,
    max_bytes: usize,
    /// Deltas and frame bytes waiting now.
    waiting: Mutex<(usize, usize)>,
    /// The delta count, for the gauge to read without the lock.
    deltas: AtomicUsize,
}

impl Backlog {
    fn new(limits: &StreamLimits) -> Self {
        Backlog {
            max_deltas: limits.max_pending,
            max_bytes: limits.max_pending_bytes,
            waiting: Mutex::new((0, 0)),
            deltas: AtomicUsize::new(0),
        }
    }

    /// Counts a delta of `len` bytes in, or says why it does not fit.
    fn admit(&self, len: usize) -> Result<(), LogError> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let (deltas, bytes) = *waiting;
        let fits_bytes = bytes + len <= self.max_bytes || deltas == 0;
        if deltas >= self.max_deltas || !fits_bytes {
            return Err(LogError::Unavailable(format!(
                "{deltas} deltas ({bytes} bytes) already wait for the delta store \
                 (at most {} deltas, {} bytes); send it again later",
                self.max_deltas, self.max_bytes
            )));
        }
        *waiting = (deltas + 1, bytes + len);
        self.deltas.store(deltas + 1, Ordering::Relaxed);
        Ok(())
    }

    /// Counts a delta of `len` bytes out: JetStream answered, or it gave up.
    fn release(&self, len: usize) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        *waiting = (waiting.0 - 1, waiting.1 - len);
        self.deltas.store(waiting.0, Ordering::Relaxed);
    }
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
            parts_ready: AtomicBool::new(false),
        });
        // Unbounded only in type: `append` admits through the backlog.
        let (publishes, queue) = mpsc::unbounded_channel();
        let backlog = Arc::new(Backlog::new(&limits));
        tokio::spawn(publisher(Arc::clone(&inner), queue, Arc::clone(&backlog)));
        JetStreamLog {
            inner,
            resume_key: hmac::Key::new(hmac::HMAC_SHA256, resume_secret),
            publishes,
            feeds: Arc::default(),
            backlog,
        }
    }

    /// Deltas published and not yet acknowledged by JetStream.
    pub fn pending(&self) -> usize {
        self.backlog.deltas.load(Ordering::Relaxed)
    }

    fn feeds(&self) -> std::sync::MutexGuard<'_, Feeds> {
        lock_feeds(&self.feeds)
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
        let feeds = self.feeds();
        for feed in feeds.following.values() {
            feed.task.abort();
        }
        for timer in feeds.idle.values() {
            timer.abort();
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
        let len = frame.as_bytes().len();
        self.backlog.admit(len)?;
        let parts_subject = (frame.as_bytes().len() > PART_SIZE)
            .then(|| fleet::delta_parts_subject(session, by.origin, client_seq));
        let publish = Publish {
            subject: fleet::deltas_subject(session),
            parts_subject,
            msg_id: fleet::delta_msg_id(by.origin, client_seq),
            origin: by.origin,
            frame: Bytes::copy_from_slice(frame.as_bytes()),
            client_seq,
            ack_to: ack_to.clone(),
        };
        if self.publishes.send(publish).is_err() {
            self.backlog.release(len);
            return Err(LogError::Unavailable("the publisher stopped".into()));
        }
        Ok(Appended::Pending)
    }

    fn head(&self, session: &str) -> u64 {
        self.inner.replica.head(session)
    }

    fn is_current(&self, session: &str) -> bool {
        self.feeds()
            .following
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
        if let Some(timer) = feeds.idle.remove(session) {
            timer.abort();
        }
        let feed = feeds
            .following
            .entry(Arc::clone(session))
            .or_insert_with(|| {
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
        let Some(feed) = feeds.following.get_mut(session) else {
            return;
        };
        feed.watchers -= 1;
        if feed.watchers > 0 {
            return;
        }
        feed.task.abort();
        feeds.following.remove(session);
        let timer = tokio::spawn(forget_when_idle(
            Arc::clone(&self.inner),
            Arc::clone(&self.feeds),
            Arc::clone(session),
        ));
        if let Some(earlier) = feeds.idle.insert(Arc::clone(session), timer) {
            earlier.abort();
        }
    }
}

fn lock_feeds(feeds: &Mutex<Feeds>) -> std::sync::MutexGuard<'_, Feeds> {
    feeds.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forgets `session`'s replica once it has had no local peer for
/// [`StreamLimits::replica_idle`] (a peer that came back in between
/// aborted this timer, and the replica keeps a watched session anyway).
async fn forget_when_idle(inner: Arc<Inner>, feeds: Arc<Mutex<Feeds>>, session: Arc<str>) {
    tokio::time::sleep(inner.limits.replica_idle).await;
    let mut feeds = lock_feeds(&feeds);
    feeds.idle.remove(&session);
    if !feeds.following.contains_key(&session) {
        inner.replica.forget(&session);
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

/// The configuration of the fleet's stream of large deltas' parts.
fn parts_stream_config(limits: &StreamLimits) -> stream::Config {
    stream::Config {
        name: fleet::DELTA_PARTS_STREAM.into(),
        subjects: vec![fleet::delta_parts_subjects()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_bytes: limits.parts_max_bytes,
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
        ingest(inner, session, seq, &message).await?;
    }
    Err("the stream's consumer ended".into())
}

/// Re-validates one delta from the stream (fetching its parts, for a
/// large one) and stores it in the replica.
async fn ingest(
    inner: &Inner,
    session: &Arc<str>,
    seq: u64,
    message: &async_nats::Message,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let headers = message
        .headers
        .as_ref()
        .ok_or_else(|| format!("seq {seq} of {session} has no headers"))?;
    let origin = headers
        .get(ORIGIN)
        .and_then(|value| value.as_str().parse::<Id>().ok())
        .ok_or_else(|| format!("seq {seq} of {session} names no origin"))?;
    let assembled;
    let bytes: &[u8] = match headers.get(PARTS) {
        Some(parts) => {
            assembled = fetch_parts(inner, session, origin, &message.payload, parts.as_str())
                .await
                .map_err(|error| format!("seq {seq} of {session}: {error}"))?;
            &assembled
        }
        None => &message.payload,
    };
    let frame = DeltaFrame::parse(bytes)
        .map_err(|error| format!("seq {seq} of {session} is not a valid frame: {error}"))?;
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

/// The frame of a large delta from its parts, named by their sequences in
/// the parts stream; each must be on this delta's subject, and together
/// they must start with the `header` its session message carries.
async fn fetch_parts(
    inner: &Inner,
    session: &str,
    origin: Id,
    header: &[u8],
    sequences: &str,
) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    let client_seq = DeltaFrame::peek_client_seq(header).ok_or("no frame header")?;
    let expected = fleet::delta_parts_subject(session, origin, client_seq);
    let sequences: Vec<u64> = sequences
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| "unreadable part sequences")?;
    if sequences.is_empty() || sequences.len() > MAX_PARTS {
        return Err(format!("{} parts", sequences.len()).into());
    }
    let stream = inner.js.get_stream(fleet::DELTA_PARTS_STREAM).await?;
    let mut frame = Vec::new();
    for sequence in sequences {
        let part = stream.get_raw_message(sequence).await?;
        if part.subject.as_str() != expected {
            return Err(format!("part {sequence} is on {}, not {expected}", part.subject).into());
        }
        frame.extend_from_slice(&part.payload);
    }
    if !frame.starts_with(header) {
        return Err("the parts do not begin with the delta's header".into());
    }
    Ok(frame)
}

/// Publishes deltas in the order they come, many in flight at once: each
/// message is handed to the NATS connection in turn (so JetStream stores
/// one sender's deltas in the order the relay accepted them), and only the
/// acknowledgements are awaited together. A large delta's parts are stored
/// before its session message is sent, so later deltas wait for them.
async fn publisher(
    inner: Arc<Inner>,
    mut queue: mpsc::UnboundedReceiver<Publish>,
    backlog: Arc<Backlog>,
) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            publish = queue.recv() => match publish {
                Some(publish) => {
                    let sent = send(&inner, publish).await;
                    in_flight.push(finish(&inner, sent));
                }
                None => break,
            },
            Some(len) = in_flight.next(), if !in_flight.is_empty() => backlog.release(len),
        }
    }
    while let Some(len) = in_flight.next().await {
        backlog.release(len);
    }
}

/// One delta on its way into its session's stream.
struct Sending {
    publish: Publish,
    started: Instant,
    deadline: Instant,
    span: Option<BoxedSpan>,
    /// The session message, or why its parts could not be stored.
    message: Result<SessionMessage, String>,
    /// The first attempt's acknowledgement, once handed to the connection.
    ack: Option<async_nats::jetstream::context::PublishAckFuture>,
}

/// Stores a large delta's parts, then hands the session message to the
/// connection (the first attempt; [`finish`] retries).
async fn send(inner: &Inner, publish: Publish) -> Sending {
    let started = Instant::now();
    let deadline = started + inner.limits.retry_for;
    let span = sampled_span(inner, &publish);
    let trace_headers = span
        .as_ref()
        .map(|span| {
            let context = span.span_context().clone();
            trace::inject(&Context::new().with_remote_span_context(context))
        })
        .unwrap_or_default();
    let message = match &publish.parts_subject {
        // The session's message takes the seq: the frame header and where
        // its parts are.
        Some(subject) => publish_parts(inner, &publish, subject, deadline)
            .await
            .map(|parts| {
                let list = parts.iter().map(u64::to_string).collect::<Vec<_>>();
                SessionMessage {
                    payload: publish.frame.slice(..FRAME_HEADER_LEN),
                    parts: Some(list.join(",")),
                    trace_headers,
                }
            }),
        None => Ok(SessionMessage {
            payload: publish.frame.clone(),
            parts: None,
            trace_headers,
        }),
    };
    let ack = match &message {
        Ok(message) => inner
            .js
            .send_publish(publish.subject.clone(), message.build(&publish))
            .await
            .ok(),
        Err(_) => None,
    };
    Sending {
        publish,
        started,
        deadline,
        span,
        message,
        ack,
    }
}

/// Awaits a delta's acknowledgement, publishing again with the same message
/// id until JetStream stores it or `retry_for` runs out, and hands the
/// verdict to the sender's shard; returns the frame's length, for the
/// backlog. (A retried delta may land after later ones of its sender:
/// order holds while NATS answers.)
async fn finish(inner: &Inner, sending: Sending) -> usize {
    let Sending {
        publish,
        started,
        deadline,
        mut span,
        message,
        ack,
    } = sending;
    let outcome: Result<u64, String> = async {
        let message = message?;
        if let Some(ack) = ack
            && let Ok(ack) = ack.await
        {
            return Ok(ack.sequence);
        }
        let ack = retrying(&publish.subject, deadline, || async {
            inner
                .js
                .send_publish(publish.subject.clone(), message.build(&publish))
                .await?
                .await
                .map_err(Into::into)
        })
        .await?;
        Ok(ack.sequence)
    }
    .await;
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
    publish.frame.len()
}

/// The message a delta is stored as in its session's stream: the whole
/// frame, or its header and where its parts are.
struct SessionMessage {
    payload: Bytes,
    /// The parts' sequences in the parts stream, comma-separated.
    parts: Option<String>,
    trace_headers: Vec<(&'static str, String)>,
}

impl SessionMessage {
    /// The message, de-duplicated by the delta's message id, with its
    /// origin, parts and trace headers.
    fn build(&self, publish: &Publish) -> PublishMessage {
        let mut message = PublishMessage::build()
            .message_id(&publish.msg_id)
            .header(fleet::ORIGIN_HEADER, publish.origin.to_string().as_str());
        if let Some(parts) = &self.parts {
            message = message.header(fleet::PARTS_HEADER, parts.as_str());
        }
        for (name, value) in &self.trace_headers {
            message = message.header(*name, value.as_str());
        }
        message.payload(self.payload.clone())
    }
}

/// Publishes the parts of a large delta (each stored once, by its message
/// id) and returns their sequences in the parts stream, in order.
async fn publish_parts(
    inner: &Inner,
    publish: &Publish,
    subject: &str,
    deadline: Instant,
) -> Result<Vec<u64>, String> {
    if !inner.parts_ready.load(Ordering::Acquire) {
        retrying(fleet::DELTA_PARTS_STREAM, deadline, || async {
            inner
                .js
                .get_or_create_stream(parts_stream_config(&inner.limits))
                .await
                .map_err(Into::into)
        })
        .await?;
        inner.parts_ready.store(true, Ordering::Release);
    }
    let mut sequences = Vec::with_capacity(publish.frame.len().div_ceil(PART_SIZE));
    for (index, start) in (0..publish.frame.len()).step_by(PART_SIZE).enumerate() {
        let part = publish
            .frame
            .slice(start..(start + PART_SIZE).min(publish.frame.len()));
        let msg_id = format!("{}:{index}", publish.msg_id);
        let ack = retrying(subject, deadline, || {
            let message = PublishMessage::build()
                .message_id(&msg_id)
                .payload(part.clone());
            async {
                inner
                    .js
                    .send_publish(subject.to_owned(), message)
                    .await?
                    .await
                    .map_err(Into::into)
            }
        })
        .await?;
        sequences.push(ack.sequence);
    }
    Ok(sequences)
}

/// Runs `attempt` until it succeeds, backing off between failures, or
/// `deadline` would pass; then the last error, for the sender's `Reject`.
async fn retrying<T, F, A>(subject: &str, deadline: Instant, mut attempt: A) -> Result<T, String>
where
    A: FnMut() -> F,
    F: std::future::Future<Output = Result<T, Box<dyn std::error::Error + Send + Sync>>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() + backoff < deadline => {
                tracing::debug!(%subject, %error, "publish failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(error) => return Err(format!("the delta store is unavailable: {error}")),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use deltamesh_proto::FrameHeader;
    use deltamesh_testkit::NatsServer;
    use prometheus_client::metrics::histogram::exponential_buckets;

    async fn relay_log(url: &str, relay: Id) -> JetStreamLog {
        relay_log_with(url, relay, StreamLimits::default()).await
    }

    async fn relay_log_with(url: &str, relay: Id, limits: StreamLimits) -> JetStreamLog {
        let client = async_nats::connect(url).await.expect("NATS answers");
        JetStreamLog::new(
            jetstream::new(client),
            Arc::new(ChunkStore::new(4 << 20, 64)),
            relay,
            None,
            b"a fleet secret",
            limits,
            LogTelemetry {
                publish_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 8)),
                trace_every: 0,
            },
        )
    }

    async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(Instant::now() < deadline, "{what} within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_16_mib_delta_appended_on_one_relay_is_read_whole_with_one_seq_on_another() {
        let nats = NatsServer::start();
        let started = Instant::now();
        let a = relay_log(&nats.url(), Id::random()).await;
        let b = relay_log(&nats.url(), Id::random()).await;
        let session: Arc<str> = "large.deltas".into();
        let (wake_a, wake_b) = (
            Arc::new(ShardWake::default()),
            Arc::new(ShardWake::default()),
        );
        a.watch(&session, &wake_a);
        b.watch(&session, &wake_b);
        until("both current", || {
            (a.is_current(&session) && b.is_current(&session)).then_some(())
        })
        .await;
        let origin = Id::random();
        let payload: Vec<u8> = (0..16 * 1024 * 1024 - FRAME_HEADER_LEN)
            .map(|i| (i % 251) as u8)
            .collect();
        let big = FrameHeader {
            client_seq: 1,
            ..FrameHeader::default()
        }
        .encode(&payload)
        .expect("a frame");
        let small = FrameHeader {
            client_seq: 2,
            ..FrameHeader::default()
        }
        .encode(b"after")
        .expect("a frame");
        let by = Acceptance {
            origin,
            validator: Id::random(),
            validated_at_us: 0,
            signer: None,
        };
        let ack_to = AckTo {
            shard: Arc::clone(&wake_a),
            peer: origin,
        };
        let mut acks = Vec::new();
        for frame in [&big, &small] {
            let frame = DeltaFrame::parse(frame).expect("valid");
            assert_eq!(
                a.append(&session, by, frame, &ack_to),
                Ok(Appended::Pending)
            );
            let ack = until("JetStream's ack", || wake_a.take().acks.pop()).await;
            acks.push((ack.client_seq, ack.outcome));
        }
        assert_eq!(acks, vec![(1, Ok(1)), (2, Ok(2))], "one seq each, in order");
        until("b's replica has both", || {
            (b.head(&session) == 2).then_some(())
        })
        .await;
        let mut read = Vec::new();
        b.read(&session, 1, 10, &mut read).expect("read");
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].view().seq(), 1);
        assert_eq!(
            read[0].view().frame_bytes(),
            &big[..],
            "whole, byte for byte"
        );
        assert_eq!(read[1].view().seq(), 2);
        assert_eq!(read[1].view().frame_bytes(), &small[..]);
        // A resend is the delta it was, not a new one.
        let resent = DeltaFrame::parse(&big).expect("valid");
        until("a's replica has both", || {
            (a.head(&session) == 2).then_some(())
        })
        .await;
        assert_eq!(
            a.append(&session, by, resent, &ack_to),
            Ok(Appended::Duplicate(1))
        );
        eprintln!("16 MiB through JetStream: {:?}", started.elapsed());
    }

    fn frame(client_seq: u64) -> Vec<u8> {
        FrameHeader {
            client_seq,
            ..FrameHeader::default()
        }
        .encode(format!("delta {client_seq}").as_bytes())
        .expect("a frame")
    }

    /// One origin appending frames `1..=count` to one session it watches.
    struct Writer {
        session: Arc<str>,
        wake: Arc<ShardWake>,
        origin: Id,
        frames: Vec<Vec<u8>>,
    }

    impl Writer {
        /// Watches `session` on `log` and waits until it is current.
        async fn on(log: &JetStreamLog, session: &str, count: u64) -> Writer {
            let writer = Writer {
                session: session.into(),
                wake: Arc::new(ShardWake::default()),
                origin: Id::random(),
                frames: (1..=count).map(frame).collect(),
            };
            log.watch(&writer.session, &writer.wake);
            until("current", || log.is_current(&writer.session).then_some(())).await;
            writer
        }

        fn append(&self, log: &JetStreamLog, client_seq: u64) -> Result<Appended, LogError> {
            let by = Acceptance {
                origin: self.origin,
                validator: self.origin,
                validated_at_us: 0,
                signer: None,
            };
            let ack_to = AckTo {
                shard: Arc::clone(&self.wake),
                peer: self.origin,
            };
            let frame = DeltaFrame::parse(&self.frames[client_seq as usize - 1]).expect("valid");
            log.append(&self.session, by, frame, &ack_to)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_nats_away_the_backlog_holds_its_bound_and_what_it_took_is_stored_once_after() {
        let mut nats = NatsServer::start();
        let limits = StreamLimits {
            max_pending: 8,
            retry_for: Duration::from_secs(30),
            ..StreamLimits::default()
        };
        let log = relay_log_with(&nats.url(), Id::random(), limits).await;
        let writer = Writer::on(&log, "outage.backlog", 20).await;
        let append = |client_seq| writer.append(&log, client_seq);
        let wake = &writer.wake;
        let session = &writer.session;

        nats.stop();
        for client_seq in 1..=8 {
            assert_eq!(append(client_seq), Ok(Appended::Pending), "#{client_seq}");
        }
        let refused = Instant::now();
        for client_seq in 9..=20 {
            match append(client_seq) {
                Err(LogError::Unavailable(detail)) => {
                    assert!(detail.contains("send it again later"), "{detail}")
                }
                other => panic!("#{client_seq} past the bound: {other:?}"),
            }
        }
        assert!(
            refused.elapsed() < Duration::from_millis(100),
            "refused at once"
        );
        assert_eq!(log.pending(), 8, "the backlog holds its bound");

        nats.restart();
        let mut acks = Vec::new();
        while acks.len() < 8 {
            let taken = until("JetStream's acks after the outage", || {
                let taken = wake.take().acks;
                (!taken.is_empty()).then_some(taken)
            })
            .await;
            for ack in taken {
                acks.push((
                    ack.client_seq,
                    ack.outcome.expect("stored once NATS is back"),
                ));
            }
        }
        let mut seqs: Vec<u64> = acks.iter().map(|(_, seq)| *seq).collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=8).collect::<Vec<_>>(),
            "each stored once: {acks:?}"
        );
        until("the backlog drained", || (log.pending() == 0).then_some(())).await;

        // What was refused goes in now, and a resend of what was taken is
        // the delta it was.
        assert_eq!(append(9), Ok(Appended::Pending));
        let ack = until("the ack of #9", || wake.take().acks.pop()).await;
        assert_eq!((ack.client_seq, ack.outcome), (9, Ok(9)));
        until("the replica has all nine", || {
            (log.head(session) == 9).then_some(())
        })
        .await;
        let stored_as = acks
            .iter()
            .find(|(client_seq, _)| *client_seq == 3)
            .map(|(_, seq)| *seq)
            .expect("#3 acked");
        assert_eq!(append(3), Ok(Appended::Duplicate(stored_as)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_without_peers_is_forgotten_after_the_idle_time_and_replayed_later() {
        let nats = NatsServer::start();
        let limits = StreamLimits {
            replica_idle: Duration::from_millis(300),
            ..StreamLimits::default()
        };
        let log = relay_log_with(&nats.url(), Id::random(), limits).await;
        let writer = Writer::on(&log, "idle.session", 3).await;
        let append = |client_seq| writer.append(&log, client_seq);
        let (session, wake) = (&writer.session, &writer.wake);
        for client_seq in 1..=3 {
            assert_eq!(append(client_seq), Ok(Appended::Pending));
        }
        until("the replica has all three", || {
            (log.head(session) == 3).then_some(())
        })
        .await;

        // Back within the idle time: still there, no replay needed.
        log.unwatch(session, wake);
        tokio::time::sleep(Duration::from_millis(100)).await;
        log.watch(session, wake);
        assert_eq!(log.head(session), 3, "kept while a peer may come back");
        log.unwatch(session, wake);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            log.head(session),
            3,
            "the idle time starts at the last leave"
        );

        until("forgotten after the idle time", || {
            (log.head(session) == 0).then_some(())
        })
        .await;
        assert!(log.feeds().idle.is_empty(), "no timer left behind");

        // A peer that comes later has the session replayed, resends known.
        log.watch(session, wake);
        until("current again", || log.is_current(session).then_some(())).await;
        assert_eq!(log.head(session), 3);
        assert_eq!(append(2), Ok(Appended::Duplicate(2)));
    }
}
