//! The two ways a call is attempted, retried and ended: reads (idempotent: try member after
//! member until the deadline) and writes (retried only where the verdict allows).
//!
//! ```text
//! read:   for each round until the deadline: for each endpoint (route order):
//!           ok -> done | Final -> that error | anything else -> next endpoint
//!         deadline -> Unavailable (a read changes nothing)
//! write:  [exactly-once: take a number (id, seq)]
//!         for each round until the deadline: for each endpoint (leader first):
//!           ok -> done | Final -> that error (Unknown if an attempt was ambiguous)
//!           NotApplied -> next endpoint
//!           Ambiguous -> exactly-once: same id+seq to the next endpoint; else Unknown at once
//!           SessionForgotten -> Unknown if an attempt was ambiguous, else Failed; new client id
//!         deadline -> Unknown if any attempt may have applied, else Unavailable
//! ```

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;
use tonic::Request;
use tonic::Status;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use super::Client;
use super::endpoints::Conn;
use super::endpoints::Route;
use super::error::Error;
use super::error::Verdict;
use super::error::classify;
use super::write_session::CLIENT_ACK_METADATA;
use super::write_session::CLIENT_ID_METADATA;
use super::write_session::CLIENT_SEQ_METADATA;
use super::write_session::CLIENT_SESSION_WINDOW;

/// Pause after every endpoint failed once, before the next round: a round of refusals during an
/// election would otherwise spin; short next to an election (about a second).
pub const RETRY_ROUND_PAUSE: Duration = Duration::from_millis(100);

/// A write attempt is not started with less time left: it could hardly finish, and a write cut
/// off by the deadline is Unknown, where not sending it leaves it definitely not applied.
pub const WRITE_ATTEMPT_TIME_MIN: Duration = Duration::from_millis(100);

/// gRPC metadata the client adds to one request.
pub(crate) type Metadata = Vec<(&'static str, AsciiMetadataValue)>;

fn request<M>(message: M, timeout: Duration, metadata: &Metadata) -> Request<M> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    for (key, value) in metadata {
        request.metadata_mut().insert(*key, value.clone());
    }
    request
}

/// The last failure seen at each endpoint, for the error message of a call that ran out of time.
#[derive(Default)]
struct Failures(Vec<(String, String)>);

impl Failures {
    fn note(&mut self, url: &str, failure: String) {
        match self.0.iter_mut().find(|(u, _)| u == url) {
            Some(entry) => entry.1 = failure,
            None => self.0.push((url.to_string(), failure)),
        }
    }

    fn summary(&self) -> String {
        let mut text = String::new();
        for (url, failure) in &self.0 {
            let _ = write!(
                text,
                "{}{url}: {failure}",
                if text.is_empty() { "" } else { "; " }
            );
        }
        if text.is_empty() {
            text.push_str("no endpoint was tried");
        }
        text
    }
}

/// Sleeps [`RETRY_ROUND_PAUSE`] unless that would pass the deadline (then returns false).
async fn pause_before_next_round(deadline: Instant) -> bool {
    let next = Instant::now() + RETRY_ROUND_PAUSE;
    if next >= deadline {
        return false;
    }
    tokio::time::sleep_until(next).await;
    true
}

/// How long one attempt may take: all that remains, or `attempt_max` while at least twice that
/// remains (so the last attempt still gets a fair share).
fn attempt_timeout(remaining: Duration, attempt_max: Option<Duration>) -> Duration {
    match attempt_max {
        Some(max) if remaining > 2 * max => max,
        _ => remaining,
    }
}

impl Client {
    fn after_failure(&self, conn: &Conn) {
        self.shared.endpoints.forget_leader(&conn.url);
        self.shared.endpoints.refresh_in_background(true);
    }

    /// Runs an idempotent call: `call` gets a channel and the request; it may turn an answer it
    /// cannot use (a member behind the session) into an error status to try another member.
    pub(crate) async fn read_call<M, T, F, Fut>(
        &self,
        what: &str,
        route: Route,
        attempt_max: Option<Duration>,
        message: M,
        metadata: Metadata,
        call: F,
    ) -> Result<T, Error>
    where
        M: Clone,
        F: Fn(Channel, Request<M>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let timeout = self.shared.config.request_timeout;
        let deadline = Instant::now() + timeout;
        self.shared.endpoints.refresh_in_background(false);
        let mut failures = Failures::default();
        loop {
            for conn in self.shared.endpoints.candidates(route) {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                let limit = attempt_timeout(remaining, attempt_max);
                let attempt = call(
                    conn.channel.clone(),
                    request(message.clone(), limit, &metadata),
                );
                match tokio::time::timeout(limit, attempt).await {
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(status)) => match classify(&status) {
                        Verdict::Final(error) => return Err(error),
                        Verdict::NotApplied(text)
                        | Verdict::Ambiguous(text)
                        | Verdict::SessionForgotten(text) => {
                            failures.note(&conn.url, text);
                            self.after_failure(&conn);
                        }
                    },
                    Err(_) => {
                        failures.note(&conn.url, format!("no answer within {limit:?}"));
                        self.after_failure(&conn);
                    }
                }
            }
            if !pause_before_next_round(deadline).await {
                return Err(Error::Unavailable {
                    message: format!(
                        "{what}: no member answered within {timeout:?} ({})",
                        failures.summary()
                    ),
                });
            }
        }
    }

    /// Runs a write (Put, DeleteRange, Txn) by the rules in the module docs.
    pub(crate) async fn write_call<M, T, F, Fut>(
        &self,
        what: &str,
        message: M,
        call: F,
    ) -> Result<T, Error>
    where
        M: Clone,
        F: Fn(Channel, Request<M>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let timeout = self.shared.config.request_timeout;
        let deadline = Instant::now() + timeout;
        let endpoints = &self.shared.endpoints;
        endpoints.refresh_in_background(endpoints.leader().is_none());
        let ticket = match self.write_session() {
            Some(session) => match session.begin(deadline).await {
                Some(ticket) => Some(ticket),
                None => {
                    return Err(Error::Failed {
                        code: Code::ResourceExhausted,
                        message: format!(
                            "{what}: not sent: {CLIENT_SESSION_WINDOW} earlier writes of this client were still unfinished at the deadline ({timeout:?})"
                        ),
                    });
                }
            },
            None => None,
        };
        let mut failures = Failures::default();
        // Why an earlier attempt may have been applied, once one may have.
        let mut ambiguous: Option<String> = None;
        let unknown = |what: &str, why: &str, failures: &Failures| Error::Unknown {
            message: format!("{what}: {why} ({})", failures.summary()),
        };
        loop {
            for conn in endpoints.candidates(Route::Leader) {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining < WRITE_ATTEMPT_TIME_MIN {
                    break;
                }
                let metadata: Metadata = match &ticket {
                    Some(ticket) => vec![
                        (CLIENT_ID_METADATA, ticket.session().id().into()),
                        (CLIENT_SEQ_METADATA, ticket.seq().into()),
                        (CLIENT_ACK_METADATA, ticket.session().ack_to_send().into()),
                    ],
                    None => Vec::new(),
                };
                self.shared.write_attempts.fetch_add(1, Ordering::Relaxed);
                let attempt = call(
                    conn.channel.clone(),
                    request(message.clone(), remaining, &metadata),
                );
                let status = match tokio::time::timeout(remaining, attempt).await {
                    Ok(Ok(value)) => {
                        if let Some(ticket) = &ticket {
                            ticket.session().confirm();
                        }
                        return Ok(value);
                    }
                    Ok(Err(status)) => status,
                    Err(_) => {
                        failures.note(&conn.url, format!("no answer within {remaining:?}"));
                        return Err(unknown(
                            what,
                            "sent, and no answer came before the deadline",
                            &failures,
                        ));
                    }
                };
                match classify(&status) {
                    Verdict::Final(error) => {
                        return Err(match &ambiguous {
                            Some(why) => unknown(
                                what,
                                &format!(
                                    "an earlier attempt may have been applied ({why}); then: {error}"
                                ),
                                &failures,
                            ),
                            None => error,
                        });
                    }
                    Verdict::NotApplied(text) => {
                        failures.note(&conn.url, text);
                        self.after_failure(&conn);
                    }
                    Verdict::SessionForgotten(text) => {
                        let Some(ticket) = &ticket else {
                            return Err(Error::Failed {
                                code: status.code(),
                                message: text,
                            });
                        };
                        self.renew_write_session(ticket.session().id());
                        return Err(match &ambiguous {
                            Some(why) => unknown(
                                what,
                                &format!(
                                    "an earlier attempt may have been applied ({why}) and the server no longer remembers it: {text}"
                                ),
                                &failures,
                            ),
                            None => Error::Failed {
                                code: Code::FailedPrecondition,
                                message: text,
                            },
                        });
                    }
                    Verdict::Ambiguous(text) => {
                        failures.note(&conn.url, text.clone());
                        self.after_failure(&conn);
                        if ticket.is_none() {
                            return Err(unknown(what, "may have been applied", &failures));
                        }
                        ambiguous = Some(text);
                    }
                }
            }
            if !pause_before_next_round(deadline).await {
                return Err(match ambiguous {
                    Some(_) => unknown(
                        what,
                        &format!(
                            "may have been applied; no member confirmed it within {timeout:?}"
                        ),
                        &failures,
                    ),
                    None => Error::Unavailable {
                        message: format!(
                            "{what}: not applied: no member accepted it within {timeout:?} ({})",
                            failures.summary()
                        ),
                    },
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_attempt_leaves_the_last_one_all_that_remains() {
        let second = Duration::from_secs(1);
        assert_eq!(
            attempt_timeout(Duration::from_secs(5), Some(second)),
            second
        );
        assert_eq!(
            attempt_timeout(Duration::from_millis(1500), Some(second)),
            Duration::from_millis(1500)
        );
        assert_eq!(
            attempt_timeout(Duration::from_secs(5), None),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn failures_keep_the_last_one_per_endpoint() {
        let mut failures = Failures::default();
        assert_eq!(failures.summary(), "no endpoint was tried");
        failures.note("a", "first".into());
        failures.note("b", "other".into());
        failures.note("a", "second".into());
        assert_eq!(failures.summary(), "a: second; b: other");
    }
}
