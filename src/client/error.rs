//! The client's one error enum, and the one place a gRPC status is judged: final answer, safe to
//! retry, or ambiguous (the table is in the [module docs](super)).
//!
//! Must never: call an outcome "not applied" unless the server said so or the request provably
//! never left this process.

use std::error::Error as _;

use tonic::Code;
use tonic::Status;

/// Why a call failed. A failed compare in a transaction is not an error (it is
/// [`TxnResponse::succeeded`](super::TxnResponse::succeeded) `== false`).
///
/// Compacted and future revisions are [`Error::Failed`] with code `OutOfRange` and etcd's message
/// (`etcdserver: mvcc: required revision has been compacted` / `... is a future revision`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server refused the request or it provably failed before being applied: nothing
    /// changed.
    #[error("failed ({code:?}), not applied: {message}")]
    Failed { code: Code, message: String },
    /// The request may or may not have been applied (the connection broke or the deadline passed
    /// after it was sent, the leader changed while it was in flight). Read the data to find out.
    #[error("outcome unknown (may or may not have been applied): {message}")]
    Unknown { message: String },
    /// The key (for [`Client::get_one`](super::Client::get_one)) or the entity named does not
    /// exist.
    #[error("not found: {message}")]
    NotFound { message: String },
    /// The request itself is wrong (empty key, bad option): retrying cannot help.
    #[error("invalid argument: {message}")]
    InvalidArgument { message: String },
    /// No member could serve the request before its deadline, and nothing was applied: none was
    /// reachable, or none had a leader. The message names what was tried.
    #[error("unavailable, not applied: {message}")]
    Unavailable { message: String },
}

impl Error {
    /// The request may have been applied: only reading the data can tell.
    pub fn is_unknown(&self) -> bool {
        matches!(self, Error::Unknown { .. })
    }

    /// Nothing was applied: the request may be sent again as a new request.
    pub fn definitely_not_applied(&self) -> bool {
        !self.is_unknown()
    }

    /// The gRPC code closest to this error (what a CLI shows or exits with).
    pub fn code(&self) -> Code {
        match self {
            Error::Failed { code, .. } => *code,
            Error::Unknown { .. } => Code::Unknown,
            Error::NotFound { .. } => Code::NotFound,
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::Unavailable { .. } => Code::Unavailable,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Error::Failed { message, .. }
            | Error::Unknown { message }
            | Error::NotFound { message }
            | Error::InvalidArgument { message }
            | Error::Unavailable { message } => message,
        }
    }
}

/// What one failed attempt means for the call that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The server's final answer; nothing was applied and asking again cannot help.
    Final(Error),
    /// The request never reached a leader's log (no connection, no leader, not the leader): it
    /// may be sent again anywhere, write or read.
    NotApplied(String),
    /// The server no longer remembers this client's write number (exactly-once session lost):
    /// not applied now; whether an earlier attempt was is unknown.
    SessionForgotten(String),
    /// It may have been applied: a write must not be sent again blindly.
    Ambiguous(String),
}

/// Texts by which hyper and tonic report a connection that could not be established. tonic wraps
/// such errors in [`tonic::ConnectError`] (checked first); the texts are the fallback, pinned by
/// `a_refused_connection_is_not_applied` below.
const CONNECT_FAILURE_TEXTS: [&str; 4] = [
    "tcp connect error",
    "Connection refused",
    "connection refused",
    "dns error",
];

/// The server's refusals that prove the request was never proposed.
const NO_LEADER: &str = "etcdserver: no leader";
const NOT_LEADER: &str = "etcdserver: not leader";
/// Prefix of the server's answer to a numbered write its client session no longer holds.
pub(crate) const SESSION_FORGOTTEN_PREFIX: &str = "quorumdb: client session";

/// The status with its whole source chain, for messages.
pub(crate) fn describe(status: &Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = status.source();
    while let Some(error) = source {
        let part = error.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = error.source();
    }
    text
}

/// Whether the status was made in this process from a transport error (it then carries the
/// error as its source) rather than sent by a server. Its code is then tonic's guess from an
/// I/O error (an early EOF becomes `OutOfRange`), never the server's word.
fn is_local(status: &Status) -> bool {
    status.source().is_some()
}

fn connection_never_established(status: &Status) -> bool {
    let mut source = status.source();
    while let Some(error) = source {
        if error.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        let text = error.to_string();
        if CONNECT_FAILURE_TEXTS.iter().any(|t| text.contains(t)) {
            return true;
        }
        source = error.source();
    }
    status.code() == Code::Unavailable
        && CONNECT_FAILURE_TEXTS
            .iter()
            .any(|t| status.message().contains(t))
}

/// Judges one failed attempt. Reads treat everything but [`Verdict::Final`] as "try elsewhere".
pub(crate) fn classify(status: &Status) -> Verdict {
    let description = describe(status);
    if connection_never_established(status) {
        return Verdict::NotApplied(description);
    }
    if is_local(status) {
        return Verdict::Ambiguous(description);
    }
    let message = status.message().to_string();
    match status.code() {
        Code::InvalidArgument => Verdict::Final(Error::InvalidArgument { message }),
        Code::NotFound => Verdict::Final(Error::NotFound { message }),
        Code::FailedPrecondition if message == NOT_LEADER => Verdict::NotApplied(description),
        Code::FailedPrecondition if message.starts_with(SESSION_FORGOTTEN_PREFIX) => {
            Verdict::SessionForgotten(message)
        }
        Code::Unavailable if message == NO_LEADER => Verdict::NotApplied(description),
        code @ (Code::OutOfRange
        | Code::Unimplemented
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::AlreadyExists
        | Code::Aborted) => Verdict::Final(Error::Failed { code, message }),
        // leader changed, request timed out, server stopped, a dropped response, a reset
        // stream, an internal error, a deadline: the request may have been applied.
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Internal
        | Code::Unknown
        | Code::DataLoss
        | Code::Ok => Verdict::Ambiguous(description),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pb::etcdserverpb::RangeRequest;
    use crate::pb::etcdserverpb::kv_client::KvClient;

    fn verdict(code: Code, message: &str) -> Verdict {
        classify(&Status::new(code, message))
    }

    fn kind(verdict: &Verdict) -> &'static str {
        match verdict {
            Verdict::Final(_) => "final",
            Verdict::NotApplied(_) => "not applied",
            Verdict::SessionForgotten(_) => "session forgotten",
            Verdict::Ambiguous(_) => "ambiguous",
        }
    }

    #[test]
    fn refusals_before_proposing_are_not_applied() {
        for (code, message) in [
            (Code::Unavailable, "etcdserver: no leader"),
            (Code::FailedPrecondition, "etcdserver: not leader"),
            (
                Code::Unavailable,
                "tcp connect error: Connection refused (os error 111)",
            ),
            (Code::Unavailable, "dns error: failed to lookup address"),
        ] {
            assert_eq!(kind(&verdict(code, message)), "not applied", "{message}");
        }
    }

    #[test]
    fn in_flight_failures_are_ambiguous() {
        for (code, message) in [
            (Code::Unavailable, "etcdserver: leader changed"),
            (Code::Unavailable, "etcdserver: request timed out"),
            (Code::Unavailable, "etcdserver: server stopped"),
            (
                Code::Unavailable,
                "quorumdb: response dropped by fault injection",
            ),
            (Code::Unavailable, "error reading a body from connection"),
            (Code::DeadlineExceeded, "deadline has elapsed"),
            (Code::Cancelled, "operation was canceled"),
            (Code::Internal, "h2 protocol error"),
            (Code::Unknown, "transport error"),
        ] {
            assert_eq!(kind(&verdict(code, message)), "ambiguous", "{message}");
        }
    }

    #[test]
    fn client_errors_are_final_and_typed() {
        assert_eq!(
            verdict(Code::InvalidArgument, "etcdserver: key is not provided"),
            Verdict::Final(Error::InvalidArgument {
                message: "etcdserver: key is not provided".into()
            })
        );
        assert_eq!(
            verdict(Code::NotFound, "etcdserver: requested lease not found"),
            Verdict::Final(Error::NotFound {
                message: "etcdserver: requested lease not found".into()
            })
        );
        for code in [
            Code::OutOfRange,
            Code::Unimplemented,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
        ] {
            assert!(
                matches!(verdict(code, "x"), Verdict::Final(Error::Failed { code: c, .. }) if c == code),
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_forgotten_client_session_is_recognised() {
        let message = "quorumdb: client session 7b no longer holds write 3 (older than its window or expired); not applied now, use a new client id";
        assert_eq!(
            verdict(Code::FailedPrecondition, message),
            Verdict::SessionForgotten(message.into())
        );
    }

    #[test]
    fn a_transport_error_is_never_read_as_the_servers_word() {
        // tonic turns an early EOF into OutOfRange: that is not "compacted".
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "early eof");
        let status = Status::from_error(Box::new(eof));
        assert_eq!(kind(&classify(&status)), "ambiguous", "{status:?}");
    }

    #[test]
    fn only_unknown_may_have_been_applied() {
        let unknown = Error::Unknown {
            message: "m".into(),
        };
        assert!(unknown.is_unknown() && !unknown.definitely_not_applied());
        for error in [
            Error::Failed {
                code: Code::OutOfRange,
                message: "m".into(),
            },
            Error::NotFound {
                message: "m".into(),
            },
            Error::InvalidArgument {
                message: "m".into(),
            },
            Error::Unavailable {
                message: "m".into(),
            },
        ] {
            assert!(error.definitely_not_applied() && !error.is_unknown());
        }
    }

    /// Pins how tonic reports a refused connection on a lazily connected channel (the kind the
    /// client uses): write retries depend on it, and a tonic or hyper upgrade could change it.
    #[tokio::test]
    async fn a_refused_connection_is_not_applied() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address").port()
        }; // closed again: nothing listens there now
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        let status = KvClient::new(channel)
            .range(RangeRequest::default())
            .await
            .expect_err("nothing listens");
        assert_eq!(kind(&classify(&status)), "not applied", "{status:?}");
    }
}
