//! The bench's unary gRPC calls, made straight on an HTTP/2 connection (h2).
//!
//! The load generator shares the machine with the cluster it measures (three members and the
//! bench on two cores in the comparison), so every CPU-second it spends is taken from the members
//! of whichever system runs, and the more so the cheaper that system's requests are. Through
//! tonic's `Channel` a call passed four tasks: the client's, the channel's buffer worker (a
//! `tower` buffer), hyper's connection task, and a task hyper spawns per request to send its
//! body; at put-1000 the bench took 29% of the machine's CPU samples against 20-28% for each
//! member (bench/results/2026-12-05-bench-client.md).
//!
//! Here the client's task opens the stream, queues the whole request (headers, then the message
//! with end of stream) and reads the answer itself; only the connection's task, which h2 needs to
//! drive the socket, runs besides. What goes on the wire is the same gRPC over HTTP/2: `POST`,
//! `content-type: application/grpc`, `te: trailers`, `grpc-timeout`, a length-prefixed message;
//! the answer's `grpc-status` (in trailers, or alone in the headers) decides the outcome.
//!
//! The socket is wrapped in the server's [`CoalescedWrites`]: the requests that clients sharing a
//! connection send in one burst (their answers came in one burst) leave in one write, as Go's
//! gRPC client batches the frames queued on a connection. One write per request cost the bench
//! 7.5 us of CPU per put at put-1000; with the wrapper 5.9-6.4 us, the same servers
//! (bench/results/2026-12-05-sized-encode.md).
//!
//! Must never: count an answer without `grpc-status: 0` as a success; leave a timed-out stream
//! open (dropping it resets the stream); skip the flow-control release of what it read.

use std::time::Duration;

use bytes::Buf;
use bytes::BufMut;
use bytes::Bytes;
use bytes::BytesMut;
use http::HeaderMap;
use http::HeaderValue;
use http::Method;
use http::Request;
use http::Uri;
use http::uri::Authority;
use http::uri::PathAndQuery;
use http::uri::Scheme;
use tonic::Code;
use tonic::Status;

use crate::network::CoalescedWrites;

/// Each stream may receive this much before the bench reads it (hyper's client default).
const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// The whole connection may (hyper's client default).
const CONNECTION_WINDOW_BYTES: u32 = 5 * 1024 * 1024;
/// The 5-byte prefix of every gRPC message: compressed flag, then the length (big-endian u32).
const MESSAGE_PREFIX_BYTES: usize = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP/2 connection to one endpoint. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct Connection {
    send: h2::client::SendRequest<Bytes>,
    authority: Authority,
    /// Every call's deadline, and the `grpc-timeout` header that tells the server of it.
    timeout: Duration,
    timeout_header: HeaderValue,
}

/// Opens a plaintext HTTP/2 connection to `endpoint` (`http://host:port`) and drives it on a
/// task of its own, which ends with the connection. Each call on it fails with
/// `DeadlineExceeded` past `timeout`.
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Connection, String> {
    let timeout_header = HeaderValue::from_str(&format!("{}m", timeout.as_millis()))
        .map_err(|e| format!("timeout {timeout:?} as grpc-timeout: {e}"))?;
    let uri: Uri = endpoint.parse().map_err(|e| format!("not a URL ({e})"))?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err("the bench speaks plaintext gRPC: give http:// endpoints".to_string());
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| "the URL has no host:port".to_string())?;
    let address = match authority.port_u16() {
        Some(_) => authority.as_str().to_string(),
        None => format!("{}:80", authority.host()),
    };
    let socket = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&address))
        .await
        .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    socket.set_nodelay(true).map_err(|e| e.to_string())?;
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .handshake::<_, Bytes>(CoalescedWrites::new(socket))
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    // A broken connection fails every call still on it, and they count it by their code.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Connection {
        send,
        authority,
        timeout,
        timeout_header,
    })
}

impl Connection {
    /// Calls `path` (`/package.Service/Method`) with `request` and decodes the answer, failing
    /// with the server's status, or `DeadlineExceeded` past the connection's timeout.
    pub async fn unary<Req: prost::Message, Resp: prost::Message + Default>(
        &mut self,
        path: &'static str,
        request: &Req,
    ) -> Result<Resp, Status> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.call(path, request)).await {
            Ok(answer) => Resp::decode(answer?)
                .map_err(|e| Status::internal(format!("cannot decode the answer to {path}: {e}"))),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer to {path} within {timeout:?}"
            ))),
        }
    }

    /// One call; returns the answer's message bytes.
    async fn call<Req: prost::Message>(
        &mut self,
        path: &'static str,
        request: &Req,
    ) -> Result<Bytes, Status> {
        let length = request.encoded_len();
        let mut body = BytesMut::with_capacity(MESSAGE_PREFIX_BYTES + length);
        body.put_u8(0);
        body.put_u32(u32::try_from(length).map_err(|_| {
            Status::invalid_argument(format!("a {length}-byte request is too large for gRPC"))
        })?);
        request
            .encode(&mut body)
            .expect("the buffer was sized for the message");

        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = Some(PathAndQuery::from_static(path));
        let mut head = Request::new(());
        *head.method_mut() = Method::POST;
        *head.uri_mut() = Uri::from_parts(uri).expect("scheme, authority and path make a URI");
        let headers = head.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        headers.insert("grpc-timeout", self.timeout_header.clone());

        std::future::poll_fn(|cx| self.send.poll_ready(cx))
            .await
            .map_err(|e| h2_status("connection", &e))?;
        let (answer, mut request_body) = self
            .send
            .send_request(head, false)
            .map_err(|e| h2_status("opening a stream", &e))?;
        request_body
            .send_data(body.freeze(), true)
            .map_err(|e| h2_status("sending the request", &e))?;

        let answer = answer.await.map_err(|e| h2_status("the answer", &e))?;
        let (head, mut answer_body) = answer.into_parts();
        if head.status != http::StatusCode::OK {
            return Err(Status::new(
                http_status_code(head.status),
                format!("HTTP status {} without a gRPC answer", head.status),
            ));
        }
        // A failure may come as headers alone ("trailers-only").
        if let Some(status) = grpc_status(&head.headers) {
            return Err(match status {
                Ok(()) => Status::internal(format!("{path} answered OK without a message")),
                Err(status) => status,
            });
        }

        let mut message = BytesMut::new();
        while let Some(chunk) = answer_body.data().await {
            let chunk = chunk.map_err(|e| h2_status("reading the answer", &e))?;
            answer_body
                .flow_control()
                .release_capacity(chunk.len())
                .map_err(|e| h2_status("releasing flow control", &e))?;
            message.extend_from_slice(&chunk);
        }
        let trailers = answer_body
            .trailers()
            .await
            .map_err(|e| h2_status("reading the trailers", &e))?
            .unwrap_or_default();
        match grpc_status(&trailers) {
            Some(Ok(())) => {}
            Some(Err(status)) => return Err(status),
            None => {
                return Err(Status::internal(format!(
                    "the answer to {path} ended without grpc-status"
                )));
            }
        }
        unframe(message.freeze())
            .map_err(|reason| Status::internal(format!("the answer to {path}: {reason}")))
    }
}

/// The one message of a unary answer, without its prefix.
fn unframe(mut framed: Bytes) -> Result<Bytes, String> {
    if framed.len() < MESSAGE_PREFIX_BYTES {
        return Err(format!("{} bytes, no whole message", framed.len()));
    }
    let compressed = framed.get_u8();
    if compressed != 0 {
        return Err("a compressed message, and the bench asked for none".to_string());
    }
    let length = framed.get_u32() as usize;
    if framed.len() != length {
        return Err(format!(
            "the prefix says {length} bytes, {} came",
            framed.len()
        ));
    }
    Ok(framed)
}

/// `grpc-status` (and `grpc-message`) in `headers`: `None` when absent.
fn grpc_status(headers: &HeaderMap) -> Option<Result<(), Status>> {
    let code = headers.get("grpc-status")?;
    let code = Code::from_bytes(code.as_bytes());
    if code == Code::Ok {
        return Some(Ok(()));
    }
    let message = headers
        .get("grpc-message")
        .map(|value| percent_decode(value.as_bytes()))
        .unwrap_or_default();
    Some(Err(Status::new(code, message)))
}

/// `grpc-message` is percent-encoded UTF-8; anything malformed is kept as it came.
fn percent_decode(encoded: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some((&first, tail)) = rest.split_first() {
        let hex = |b: u8| (b as char).to_digit(16);
        match tail {
            [high, low, after @ ..] if first == b'%' => match (hex(*high), hex(*low)) {
                (Some(high), Some(low)) => {
                    bytes.push((high * 16 + low) as u8);
                    rest = after;
                    continue;
                }
                _ => bytes.push(first),
            },
            _ => bytes.push(first),
        }
        rest = tail;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The gRPC code of an HTTP status that came instead of a gRPC answer (gRPC's HTTP mapping).
fn http_status_code(status: http::StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// An HTTP/2 failure as gRPC names it (gRPC's HTTP/2 mapping of reset reasons); the connection
/// failing is `Unavailable`.
fn h2_status(during: &str, error: &h2::Error) -> Status {
    let code = match error.reason() {
        Some(h2::Reason::REFUSED_STREAM) => Code::Unavailable,
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
        Some(_) if error.is_reset() => Code::Internal,
        _ if error.is_io() || error.is_go_away() => Code::Unavailable,
        Some(_) => Code::Internal,
        None => Code::Unknown,
    };
    Status::new(code, format!("HTTP/2, {during}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_is_percent_decoded_and_kept_when_malformed() {
        assert_eq!(
            percent_decode(b"etcdserver: key not found %E2%9C%93 100%"),
            "etcdserver: key not found \u{2713} 100%"
        );
        assert_eq!(percent_decode(b"%zz%4"), "%zz%4");
    }

    #[test]
    fn an_answer_counts_as_ok_only_with_status_zero() {
        let mut headers = HeaderMap::new();
        assert!(grpc_status(&headers).is_none());
        headers.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(matches!(grpc_status(&headers), Some(Ok(()))));
        headers.insert("grpc-status", HeaderValue::from_static("9"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("etcdserver:%20requested%20lease%20not%20found"),
        );
        let status = grpc_status(&headers)
            .expect("a status")
            .expect_err("code 9 is a failure");
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "etcdserver: requested lease not found");
    }

    /// A server that takes each call, reports the `grpc-timeout` it was given on the returned
    /// channel, and never answers the call.
    async fn silent_server() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (seen, timeouts) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            let mut connection = h2::server::handshake(socket).await.expect("handshake");
            // Held open: a dropped stream would be reset, which the client sees at once.
            let mut held = Vec::new();
            while let Some(Ok((request, respond))) = connection.accept().await {
                let timeout = request
                    .headers()
                    .get("grpc-timeout")
                    .map(|v| v.to_str().expect("ascii").to_string())
                    .unwrap_or_default();
                let _ = seen.send(timeout);
                held.push((request, respond));
            }
        });
        (format!("http://{address}"), timeouts)
    }

    #[tokio::test]
    async fn a_call_without_an_answer_fails_with_deadline_exceeded_after_the_timeout() {
        let (endpoint, mut timeouts) = silent_server().await;
        let timeout = Duration::from_millis(300);
        let mut connection = connect(&endpoint, timeout).await.expect("connect");
        let started = std::time::Instant::now();
        let answer = connection
            .unary::<_, crate::pb::etcdserverpb::PutResponse>(
                "/etcdserverpb.KV/Put",
                &crate::pb::etcdserverpb::PutRequest::default(),
            )
            .await;
        let status = answer.expect_err("nothing answers");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(started.elapsed() >= timeout);
        // The server is told the same deadline, on every call of the connection.
        assert_eq!(timeouts.recv().await.as_deref(), Some("300m"));
        let again = connection
            .unary::<_, crate::pb::etcdserverpb::PutResponse>(
                "/etcdserverpb.KV/Put",
                &crate::pb::etcdserverpb::PutRequest::default(),
            )
            .await;
        assert_eq!(
            again.expect_err("still silent").code(),
            Code::DeadlineExceeded
        );
        assert_eq!(timeouts.recv().await.as_deref(), Some("300m"));
    }

    #[test]
    fn unframing_checks_the_prefix() {
        assert_eq!(
            unframe(Bytes::from_static(&[0, 0, 0, 0, 2, 7, 8])),
            Ok(Bytes::from_static(&[7, 8]))
        );
        assert!(unframe(Bytes::from_static(&[0, 0, 0, 0, 3, 7, 8])).is_err());
        assert!(unframe(Bytes::from_static(&[1, 0, 0, 0, 1, 7])).is_err());
        assert!(unframe(Bytes::from_static(&[0, 0, 0])).is_err());
    }
}
