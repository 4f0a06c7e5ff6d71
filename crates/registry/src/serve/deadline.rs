//! When a connection has outlived its welcome: no complete request head within the header
//! deadline of its accept, or no request in flight for the idle timeout.
//!
//! hyper enforces neither for every protocol: its HTTP/1 header timeout does not cover the
//! HTTP/1-or-HTTP/2 detection read of hyper-util's `auto` builder, and HTTP/2 has no header or
//! idle deadline at all. So the registry watches each connection from the outside: [`Tracked`]
//! wraps the service and records when a request head arrives and when its response ends (the
//! end of the body, so that a blocking read or an event stream counts as in flight until its
//! last byte), and [`expiry`] sleeps until the next deadline that this record implies.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::Instant;

/// The deadlines of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// The first complete request head must arrive this long after the accept (a TLS
    /// handshake included).
    pub header_read_timeout: Duration,
    /// What happens once no request is in flight.
    pub after_response: AfterResponse,
}

#[derive(Debug, Clone, Copy)]
pub enum AfterResponse {
    /// The connection may wait this long for its next request.
    StayOpen { idle_timeout: Duration },
    /// The connection is closed as soon as its answer is sent (the health reserve).
    Close,
}

/// Why a connection is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No complete request head within the header deadline.
    HeaderRead,
    /// No request in flight for the idle timeout.
    Idle,
    /// Answered, and the connection serves one answer only.
    Answered,
}

/// What a connection has done so far.
#[derive(Debug, Clone, Copy)]
pub struct Activity {
    /// Request heads received.
    requests: u64,
    /// Requests whose response has not ended.
    in_flight: usize,
    /// When `in_flight` last fell to zero (the accept, before any request).
    idle_since: Instant,
}

impl Activity {
    pub fn new(accepted: Instant) -> Activity {
        Activity {
            requests: 0,
            in_flight: 0,
            idle_since: accepted,
        }
    }

    /// No request head has arrived yet.
    pub fn awaiting_first_head(&self) -> bool {
        self.requests == 0
    }
}

/// The next deadline of a connection in state `activity`, and what it means; `None` while a
/// request is in flight (a long blocking read or an event stream is never idle).
pub fn next_deadline(
    activity: &Activity,
    accepted: Instant,
    deadlines: Deadlines,
) -> Option<(Instant, Expiry)> {
    if activity.requests == 0 {
        return Some((accepted + deadlines.header_read_timeout, Expiry::HeaderRead));
    }
    if activity.in_flight > 0 {
        return None;
    }
    Some(match deadlines.after_response {
        AfterResponse::StayOpen { idle_timeout } => {
            (activity.idle_since + idle_timeout, Expiry::Idle)
        }
        AfterResponse::Close => (activity.idle_since, Expiry::Answered),
    })
}

/// Resolves when the connection watched by `activity` passes a deadline, with the reason.
pub async fn expiry(
    mut activity: watch::Receiver<Activity>,
    accepted: Instant,
    deadlines: Deadlines,
) -> Expiry {
    loop {
        let now = *activity.borrow_and_update();
        let due = next_deadline(&now, accepted, deadlines);
        let changed = async {
            // The sender lives as long as the connection's service; once it is gone, only the
            // deadline computed last can still end the connection.
            if activity.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        match due {
            None => changed.await,
            Some((at, why)) if at <= Instant::now() => return why,
            // Requests only ever move the idle deadline later (or lift it while they are in
            // flight), so it is looked at again when it passes, not at every request: a busy
            // keep-alive connection costs this task no wake and no timer per request.
            Some((at, Expiry::Idle)) => tokio::time::sleep_until(at).await,
            // The header deadline can be replaced by an earlier one (`Answered` once the only
            // answer is sent, or a short idle timeout): watch for that.
            Some((at, _)) => {
                tokio::select! {
                    _ = changed => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
        }
    }
}

/// A service that records its requests in an [`Activity`].
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<watch::Sender<Activity>>,
}

impl<S> Tracked<S> {
    /// Wraps `inner`; the receiver is what [`expiry`] watches.
    pub fn new(inner: S, accepted: Instant) -> (Tracked<S>, watch::Receiver<Activity>) {
        let (sender, receiver) = watch::channel(Activity::new(accepted));
        let tracked = Tracked {
            inner,
            activity: Arc::new(sender),
        };
        (tracked, receiver)
    }
}

/// One request in flight: counted on creation, uncounted when dropped (its response body
/// ended, or the request was abandoned).
#[derive(Debug)]
pub struct InFlight(Arc<watch::Sender<Activity>>);

impl InFlight {
    /// [`expiry`] is woken only by the changes that can bring its deadline nearer: the first
    /// request head (the header deadline gives way) and the end of the last request in flight
    /// (an idle or `Answered` deadline starts). Any other change it reads when it next wakes.
    fn begin(activity: &Arc<watch::Sender<Activity>>) -> InFlight {
        activity.send_if_modified(|a| {
            a.requests += 1;
            a.in_flight += 1;
            a.requests == 1
        });
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_if_modified(|a| {
            a.in_flight = a.in_flight.saturating_sub(1);
            if a.in_flight == 0 {
                a.idle_since = Instant::now();
            }
            a.in_flight == 0
        });
    }
}

impl<S, B> hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Tracked<S>
where
    S: hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = hyper::Response<B>,
    >,
    S::Future: Send + 'static,
{
    type Response = hyper::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let in_flight = InFlight::begin(&self.activity);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                inner: body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that keeps its request in flight until it is dropped.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn keep_alive() -> Deadlines {
        Deadlines {
            header_read_timeout: 2 * SECOND,
            after_response: AfterResponse::StayOpen {
                idle_timeout: 10 * SECOND,
            },
        }
    }

    #[test]
    fn deadlines_follow_the_connection_state() {
        let accepted = Instant::now();
        let later = accepted + 5 * SECOND;
        let once = Deadlines {
            after_response: AfterResponse::Close,
            ..keep_alive()
        };
        for (requests, in_flight, idle_since, deadlines, expected) in [
            // Nothing yet: the header deadline from the accept, whatever came before it.
            (
                0,
                0,
                accepted,
                keep_alive(),
                Some((accepted + 2 * SECOND, Expiry::HeaderRead)),
            ),
            (
                0,
                0,
                accepted,
                once,
                Some((accepted + 2 * SECOND, Expiry::HeaderRead)),
            ),
            // A request in flight, however long: no deadline.
            (1, 1, accepted, keep_alive(), None),
            (7, 3, later, once, None),
            // Idle after a response: the idle timeout from the end of the last one.
            (
                1,
                0,
                later,
                keep_alive(),
                Some((later + 10 * SECOND, Expiry::Idle)),
            ),
            (1, 0, later, once, Some((later, Expiry::Answered))),
        ] {
            let activity = Activity {
                requests,
                in_flight,
                idle_since,
            };
            assert_eq!(
                next_deadline(&activity, accepted, deadlines),
                expected,
                "{activity:?} with {deadlines:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_holds_off_the_idle_deadline_until_its_body_ends() {
        let accepted = Instant::now();
        let (tracked, activity) = Tracked::new((), accepted);
        let watcher = tokio::spawn(expiry(activity, accepted, keep_alive()));
        let in_flight = InFlight::begin(&tracked.activity);
        tokio::time::sleep(60 * SECOND).await;
        assert!(!watcher.is_finished(), "cut while a request was in flight");
        drop(in_flight);
        let ended = Instant::now();
        assert_eq!(watcher.await.expect("expiry"), Expiry::Idle);
        assert_eq!(Instant::now() - ended, 10 * SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_within_the_idle_timeout_keep_the_connection_until_the_last_one_ends() {
        let accepted = Instant::now();
        let (tracked, activity) = Tracked::new((), accepted);
        let watcher = tokio::spawn(expiry(activity, accepted, keep_alive()));
        // A request every 6 s for a minute: each idle gap is shorter than the 10 s timeout,
        // but the first idle deadline (and several after it) passes while the connection is busy.
        for _ in 0..10 {
            let in_flight = InFlight::begin(&tracked.activity);
            tokio::time::sleep(SECOND).await;
            drop(in_flight);
            tokio::time::sleep(5 * SECOND).await;
            assert!(!watcher.is_finished(), "cut within the idle timeout");
        }
        let idle_from = Instant::now() - 5 * SECOND;
        assert_eq!(watcher.await.expect("expiry"), Expiry::Idle);
        assert_eq!(Instant::now() - idle_from, 10 * SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn a_one_answer_connection_closes_as_soon_as_its_answer_ends() {
        let accepted = Instant::now();
        let once = Deadlines {
            after_response: AfterResponse::Close,
            ..keep_alive()
        };
        let (tracked, activity) = Tracked::new((), accepted);
        let watcher = tokio::spawn(expiry(activity, accepted, once));
        let in_flight = InFlight::begin(&tracked.activity);
        tokio::time::sleep(SECOND / 2).await;
        drop(in_flight);
        assert_eq!(watcher.await.expect("expiry"), Expiry::Answered);
        assert_eq!(Instant::now() - accepted, SECOND / 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_expires_at_the_header_deadline() {
        let accepted = Instant::now();
        let (_tracked, activity) = Tracked::new((), accepted);
        assert_eq!(
            expiry(activity, accepted, keep_alive()).await,
            Expiry::HeaderRead
        );
        assert_eq!(Instant::now() - accepted, 2 * SECOND);
    }
}
