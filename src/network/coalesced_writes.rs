//! One socket write per HTTP/2 flush, not one per frame carrying 256 bytes or more.
//!
//! h2 (under tonic) encodes frames into a buffer, except that the payload of a DATA frame of
//! 256 bytes or more is kept aside and sent with the buffer in one vectored write. While one
//! payload is kept aside nothing more can be buffered, so h2 writes right away and buffers the
//! rest after. A response whose message is 256 bytes or more (a range with one 256-byte value)
//! thus leaves in two writes: headers and data, then the trailers. So does a forwarded put or an
//! append carrying one. Measured: 2 `writev` per serializable get at one client, 1 per put at
//! put-1000 (bench/results/2026-12-04-coalesced-writes.md).
//!
//! h2 keeps payloads aside only from 256 bytes when the connection takes vectored writes, and
//! from 1 KiB when it does not. [`CoalescedWrites`] says it does not, so payloads under 1 KiB are
//! copied into h2's buffer and a batch of frames leaves in one write. It still writes vectored
//! underneath: it holds what h2 writes until h2 flushes, and sends a payload that does not fit
//! beside it together with what it holds, so a large frame still costs one write, as before.
//!
//! It holds at most `BUFFER_BYTES` (16 KiB) per connection, as much as h2's own write buffer.
//!
//! Must never: hold a byte past a flush; take more of a write than it reports taken; change
//! reads.

use std::io;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;
use std::task::ready;

use bytes::Buf;
use bytes::BytesMut;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tonic::transport::server::Connected;

/// Writes are copied into the buffer while it holds less than this; h2's own write buffer is
/// 16 KiB, so one batch of small frames fits.
const BUFFER_BYTES: usize = 16 * 1024;

/// A connection whose writes reach the socket only when h2 flushes. See the module docs.
pub struct CoalescedWrites<S> {
    inner: S,
    /// Written by h2, not yet by the socket.
    held: BytesMut,
}

impl<S> CoalescedWrites<S> {
    pub fn new(inner: S) -> Self {
        CoalescedWrites {
            inner,
            held: BytesMut::new(),
        }
    }
}

impl<S: AsyncWrite + Unpin> CoalescedWrites<S> {
    /// Writes what is held until none is left (or the socket is not ready).
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.advance(written);
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `bufs`: into the buffer if they fit, else to the socket after what is held, in one
    /// vectored write. Returns how many of `bufs`' bytes were taken.
    fn take(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|buf| buf.len()).sum();
        if self.held.len() + len <= BUFFER_BYTES {
            for buf in bufs {
                self.held.extend_from_slice(buf);
            }
            return Poll::Ready(Ok(len));
        }
        loop {
            let held = self.held.len();
            if held == 0 {
                return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            }
            let mut slices = Vec::with_capacity(bufs.len() + 1);
            slices.push(IoSlice::new(&self.held));
            slices.extend(bufs.iter().map(|buf| IoSlice::new(buf)));
            let written = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if written >= held {
                self.held.clear();
                return Poll::Ready(Ok(written - held));
            }
            // Only part of what was held left: none of `bufs` did. Try again until the socket
            // takes some of `bufs` or says it is not ready.
            self.held.advance(written);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CoalescedWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.take(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.take(cx, bufs)
    }

    /// Not vectored, to h2: see the module docs. Writes are still combined underneath.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_held(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_held(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for CoalescedWrites<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> S::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::Mutex;

    use super::*;

    /// A socket that records each write it takes, taking at most `per_write` bytes a call.
    #[derive(Clone)]
    struct Recorder {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        per_write: usize,
    }

    impl Recorder {
        fn new(per_write: usize) -> Self {
            Recorder {
                writes: Arc::default(),
                per_write,
            }
        }

        fn writes(&self) -> Vec<Vec<u8>> {
            self.writes.lock().unwrap().clone()
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let taken = buf.len().min(self.per_write);
            self.writes.lock().unwrap().push(buf[..taken].to_vec());
            Poll::Ready(Ok(taken))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut write = Vec::new();
            for buf in bufs {
                let room = self.per_write - write.len();
                write.extend_from_slice(&buf[..buf.len().min(room)]);
            }
            let taken = write.len();
            self.writes.lock().unwrap().push(write);
            Poll::Ready(Ok(taken))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn write_all(io: &mut CoalescedWrites<Recorder>, mut bytes: &[u8]) {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        while !bytes.is_empty() {
            match Pin::new(&mut *io).poll_write(&mut cx, bytes) {
                Poll::Ready(Ok(taken)) => bytes = &bytes[taken..],
                other => panic!("the recorder is always ready: {other:?}"),
            }
        }
    }

    fn flush(io: &mut CoalescedWrites<Recorder>) {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(
            Pin::new(io).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
    }

    #[test]
    fn small_writes_reach_the_socket_only_at_the_flush_and_in_one_write() {
        let socket = Recorder::new(usize::MAX);
        let mut io = CoalescedWrites::new(socket.clone());
        write_all(&mut io, b"headers");
        write_all(&mut io, b"data");
        write_all(&mut io, b"trailers");
        assert!(
            socket.writes().is_empty(),
            "nothing leaves before the flush"
        );
        flush(&mut io);
        assert_eq!(socket.writes(), vec![b"headersdatatrailers".to_vec()]);
        flush(&mut io);
        assert_eq!(socket.writes().len(), 1, "an empty flush writes nothing");
    }

    #[test]
    fn a_write_too_large_to_hold_leaves_with_what_is_held_in_one_write() {
        let socket = Recorder::new(usize::MAX);
        let mut io = CoalescedWrites::new(socket.clone());
        let payload = vec![7u8; BUFFER_BYTES];
        write_all(&mut io, b"head");
        write_all(&mut io, &payload);
        let mut expected = b"head".to_vec();
        expected.extend_from_slice(&payload);
        assert_eq!(socket.writes(), vec![expected]);
        flush(&mut io);
        assert_eq!(socket.writes().len(), 1, "nothing was left to flush");
    }

    #[test]
    fn a_socket_taking_part_of_a_write_gets_every_byte_once_and_in_order() {
        let socket = Recorder::new(1000);
        let mut io = CoalescedWrites::new(socket.clone());
        let first: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let second: Vec<u8> = (0..BUFFER_BYTES as u32 + 500)
            .map(|i| (i * 7) as u8)
            .collect();
        write_all(&mut io, &first);
        write_all(&mut io, &second);
        write_all(&mut io, b"tail");
        flush(&mut io);
        let sent: Vec<u8> = socket.writes().concat();
        let expected = [first, second, b"tail".to_vec()].concat();
        assert_eq!(sent.len(), expected.len());
        assert!(sent == expected, "bytes lost, repeated or reordered");
        assert!(socket.writes().iter().all(|write| write.len() <= 1000));
    }

    /// The writing half of a socket, counting the writes it is given (for the HTTP/2 test).
    struct Counted {
        inner: tokio::io::WriteHalf<tokio::io::DuplexStream>,
        writes: Arc<Mutex<usize>>,
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
            *self.writes.lock().unwrap() += 1;
            Poll::Ready(written)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            // One call, as a socket's writev: a duplex stream would take only the first slice.
            let joined: Vec<u8> = bufs.iter().flat_map(|buf| buf.iter().copied()).collect();
            self.as_mut().poll_write(cx, &joined)
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// Socket writes an h2 server makes for one gRPC-shaped response (headers, a 300-byte
    /// message, trailers), with or without [`CoalescedWrites`].
    async fn writes_for_one_response(coalesced: bool) -> usize {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(Mutex::new(0));
        let (reads, server_writes) = tokio::io::split(server_io);
        let server_io = tokio::io::join(
            reads,
            Counted {
                inner: server_writes,
                writes: writes.clone(),
            },
        );
        let (mut client, client_conn) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(client_conn);
        let server = tokio::spawn(async move {
            let mut conn = if coalesced {
                h2::server::handshake(
                    Box::new(CoalescedWrites::new(server_io)) as Box<dyn AsyncReadWrite>
                )
                .await
                .unwrap()
            } else {
                h2::server::handshake(Box::new(server_io) as Box<dyn AsyncReadWrite>)
                    .await
                    .unwrap()
            };
            let (_request, mut respond) = conn.accept().await.unwrap().unwrap();
            (conn, respond.send_response(http::Response::new(()), false))
        });
        let request = http::Request::post("http://test/kv").body(()).unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let (mut conn, stream) = server.await.unwrap();
        let mut stream = stream.unwrap();
        // Let the connection settle (settings, their acks) before counting.
        let settle = tokio::time::timeout(std::time::Duration::from_millis(50), conn.accept());
        assert!(settle.await.is_err(), "no second request");
        let before = *writes.lock().unwrap();
        stream
            .send_data(bytes::Bytes::from(vec![1u8; 300]), false)
            .unwrap();
        stream.send_trailers(http::HeaderMap::new()).unwrap();
        let driven = tokio::spawn(async move {
            let _ = conn.accept().await;
        });
        let mut body = response.await.unwrap().into_body();
        let mut received = 0;
        while let Some(chunk) = body.data().await {
            received += chunk.unwrap().len();
        }
        assert_eq!(received, 300);
        body.trailers().await.unwrap();
        driven.abort();
        *writes.lock().unwrap() - before
    }

    trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

    #[tokio::test]
    async fn an_http2_response_with_a_message_of_300_bytes_leaves_in_one_write() {
        assert_eq!(
            writes_for_one_response(false).await,
            2,
            "h2 alone writes such a response twice: what this type is for"
        );
        assert_eq!(writes_for_one_response(true).await, 1);
    }
}
