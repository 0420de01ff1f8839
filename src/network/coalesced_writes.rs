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
//! Responses finish in bursts: one apply completes the writes of many clients at once, and each
//! response is handed to its connection by its own task. tokio runs the connection's task right
//! after the first of them (it was just woken), so each response flushed alone: 1.7 socket writes
//! per put at put-64. A flush that comes within [`BURST_WINDOW`] of this connection's last one
//! therefore lets the tasks already queued on the worker run first (it wakes its own task and
//! returns `Pending` once); h2 then buffers what they handed over, and all of it leaves in one
//! write. A flush after a quiet spell (one request at a time) goes at once: yielding there would
//! only wake an idle worker (measured: +25% CPU per serializable get at one client).
//!
//! Must never: report a flush done before every held byte has left; take more of a write than
//! it reports taken; change reads; leave a flush waiting without waking its task.

use std::io;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;
use std::task::ready;
use std::time::Duration;
use std::time::Instant;

use bytes::Buf;
use bytes::BytesMut;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tonic::transport::server::Connected;

/// Writes are copied into the buffer while it holds less than this; h2's own write buffer is
/// 16 KiB, so one batch of small frames fits.
const BUFFER_BYTES: usize = 16 * 1024;

/// A flush this soon after the connection's previous one lets queued tasks run first (see the
/// module docs). The responses of one burst come microseconds apart; one request at a time on a
/// connection comes a round trip apart (0.15 ms at the median for a serializable get at one
/// client on loopback, where the syscall counts showed no yield).
const BURST_WINDOW: Duration = Duration::from_micros(50);

/// A connection whose writes reach the socket only when h2 flushes. See the module docs.
pub struct CoalescedWrites<S> {
    inner: S,
    /// Written by h2, not yet by the socket.
    held: BytesMut,
    /// When held bytes last started for the socket at a flush.
    last_flush: Option<Instant>,
    /// The current flush has let queued tasks run once already.
    yielded: bool,
    /// [`BURST_WINDOW`]; tests set it to make every flush in or out of a burst.
    burst_window: Duration,
}

impl<S> CoalescedWrites<S> {
    pub fn new(inner: S) -> Self {
        CoalescedWrites {
            inner,
            held: BytesMut::new(),
            last_flush: None,
            yielded: false,
            burst_window: BURST_WINDOW,
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
        if !self.held.is_empty() {
            let now = Instant::now();
            let in_burst = self
                .last_flush
                .is_some_and(|last| now.saturating_duration_since(last) < self.burst_window);
            if in_burst && !self.yielded {
                // Woken at once, this task runs again after those already queued.
                self.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.last_flush = Some(now);
        }
        ready!(self.poll_write_held(cx))?;
        self.yielded = false;
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

    /// Counts the wakes of the task it stands for.
    #[derive(Default)]
    struct CountedWakes(std::sync::atomic::AtomicUsize);

    impl futures::task::ArcWake for CountedWakes {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl CountedWakes {
        fn count(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// A connection over a recorder, with the given burst window.
    fn recorded(burst_window: Duration) -> (Recorder, CoalescedWrites<Recorder>) {
        let socket = Recorder::new(usize::MAX);
        let mut io = CoalescedWrites::new(socket.clone());
        io.burst_window = burst_window;
        (socket, io)
    }

    #[test]
    fn a_flush_in_a_burst_lets_queued_tasks_run_once_then_sends_their_writes_with_its_own() {
        // Every flush after the first counts as in the burst, however slow the test runs.
        let (socket, mut io) = recorded(Duration::from_secs(3600));
        write_all(&mut io, b"first");
        flush(&mut io);
        assert_eq!(socket.writes(), vec![b"first".to_vec()], "no burst yet");

        let wakes = Arc::new(CountedWakes::default());
        let waker = futures::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        write_all(&mut io, b"mine");
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_pending());
        assert_eq!(
            wakes.count(),
            1,
            "the flush must wake its own task, or the bytes wait forever"
        );
        assert_eq!(socket.writes().len(), 1, "nothing leaves while others run");
        // Another task's response, handed over meanwhile.
        write_all(&mut io, b"theirs");
        assert!(matches!(
            Pin::new(&mut io).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(
            socket.writes(),
            vec![b"first".to_vec(), b"minetheirs".to_vec()]
        );
        assert_eq!(wakes.count(), 1);

        // The next flush of the burst yields again: the yield is per flush, not once ever.
        write_all(&mut io, b"next");
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_pending());
        assert_eq!(wakes.count(), 2);
        assert!(matches!(
            Pin::new(&mut io).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(socket.writes().len(), 3);
        // Nothing held, nothing to wait for.
        assert!(matches!(
            Pin::new(&mut io).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(wakes.count(), 2);
    }

    /// The window runs from the connection's latest flush, not its first.
    #[test]
    fn the_burst_window_starts_at_the_latest_flush() {
        let (socket, mut io) = recorded(Duration::from_millis(200));
        write_all(&mut io, b"early");
        flush(&mut io);
        std::thread::sleep(Duration::from_millis(400));
        write_all(&mut io, b"quiet");
        flush(&mut io);
        // Well within the window of "quiet", long past that of "early".
        let wakes = Arc::new(CountedWakes::default());
        let waker = futures::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        write_all(&mut io, b"burst");
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_pending());
        assert_eq!(wakes.count(), 1);
        assert_eq!(socket.writes(), vec![b"early".to_vec(), b"quiet".to_vec()]);
    }

    #[test]
    fn a_flush_after_a_quiet_spell_goes_at_once() {
        let (socket, mut io) = recorded(Duration::from_millis(1));
        for write in [&b"one"[..], b"two", b"three"] {
            write_all(&mut io, write);
            // `flush` asserts the flush is done at once.
            flush(&mut io);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(
            socket.writes(),
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
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
