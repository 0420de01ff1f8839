//! Makes etcd's Go clients' `:authority` acceptable to the `h2` crate.
//!
//! etcdctl 3.4 (`--cluster`, or `--endpoints=http://...` for status/health) dials a member's
//! client URL and grpc-go then sends the whole `http://host:port` as the HTTP/2 `:authority`.
//! etcd's Go server accepts that; `h2` (under tonic) resets the stream as malformed before any
//! of our code runs, and will not relax the check (hyperium/h2#525).
//!
//! [`AuthorityFix`] wraps an accepted connection and rewrites, in the client-to-server direction
//! only, each HTTP/2 header block whose `:authority` carries a scheme: the scheme is dropped and
//! the value is re-encoded as a plain (non-Huffman) literal. Frames other than HEADERS and
//! CONTINUATION stream through byte for byte without being buffered; header blocks are
//! re-framed (padding dropped) and otherwise keep every byte.
//!
//! HPACK consistency: a rewritten value is shorter than the client's, so the entry the server
//! adds to its dynamic table is smaller than the client's. Both tables add and reference entries
//! in the same order and the server never evicts sooner than the client, so every index the
//! client sends still names the same entry on the server.
//!
//! Must never: change anything but a scheme-prefixed `:authority`; buffer more than one header
//! frame (at most the 16 KiB minimum frame size) or one header block (`HEADER_BLOCK_BYTES_MAX`).

use std::io;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;

use bytes::Buf;
use bytes::BytesMut;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_BYTES: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a peer may announce: re-emitted frames never exceed it.
const FRAME_PAYLOAD_BYTES_MIN_MAX: usize = 16_384;
/// A header block larger than this is passed on untouched (h2 will judge it).
const HEADER_BLOCK_BYTES_MAX: usize = 1024 * 1024;
/// Room made in the read buffer before each socket read.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// `:authority` is entry 1 of HPACK's static table.
const STATIC_INDEX_AUTHORITY: u64 = 1;

/// A header block collected from a HEADERS frame and its CONTINUATION frames.
struct PendingBlock {
    stream_id: [u8; 4],
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// An accepted client connection with scheme-prefixed `:authority` values normalised.
pub struct AuthorityFix<S = TcpStream> {
    inner: S,
    /// Bytes read from the socket and not yet examined.
    raw: BytesMut,
    /// Bytes examined and ready for the reader (h2).
    ready: BytesMut,
    preface_checked: bool,
    /// Not HTTP/2 with prior knowledge, or past a block we could not parse: copy everything.
    pass_through: bool,
    pending: Option<PendingBlock>,
    /// Payload bytes of the current non-header frame still to stream through.
    passthrough_remaining: usize,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            raw: BytesMut::with_capacity(16 * 1024),
            ready: BytesMut::with_capacity(16 * 1024),
            preface_checked: false,
            pass_through: false,
            pending: None,
            passthrough_remaining: 0,
        }
    }

    /// Moves every complete unit (preface, frame, header block) from `raw` to `ready`.
    fn process(&mut self) {
        if self.pass_through {
            let all = self.raw.split();
            self.ready.extend_from_slice(&all);
            return;
        }
        if !self.preface_checked {
            let available = self.raw.len().min(PREFACE.len());
            if self.raw[..available] != PREFACE[..available] {
                self.pass_through = true;
                return self.process();
            }
            if self.raw.len() < PREFACE.len() {
                return;
            }
            self.ready.extend_from_slice(&self.raw[..PREFACE.len()]);
            self.raw.advance(PREFACE.len());
            self.preface_checked = true;
        }
        loop {
            if self.passthrough_remaining > 0 {
                let count = self.passthrough_remaining.min(self.raw.len());
                let bytes = self.raw.split_to(count);
                self.ready.extend_from_slice(&bytes);
                self.passthrough_remaining -= count;
                if self.passthrough_remaining > 0 {
                    return;
                }
            }
            if self.raw.len() < FRAME_HEADER_BYTES {
                return;
            }
            let length = u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]) as usize;
            let is_header_frame = matches!(self.raw[3], FRAME_HEADERS | FRAME_CONTINUATION);
            if !is_header_frame && self.pending.is_none() {
                let header = self.raw.split_to(FRAME_HEADER_BYTES);
                self.ready.extend_from_slice(&header);
                self.passthrough_remaining = length;
                continue;
            }
            if !is_header_frame {
                // Another frame inside a header block is a protocol error: let h2 see it.
                self.give_up();
                return self.process();
            }
            if length > FRAME_PAYLOAD_BYTES_MIN_MAX {
                // Larger than any frame h2 accepts by default: let it reject the connection.
                self.give_up();
                return self.process();
            }
            if self.raw.len() < FRAME_HEADER_BYTES + length {
                return;
            }
            let frame = self.raw.split_to(FRAME_HEADER_BYTES + length);
            let kind = frame[3];
            let flags = frame[4];
            let stream_id: [u8; 4] = frame[5..9].try_into().expect("four bytes");
            let payload = &frame[FRAME_HEADER_BYTES..];
            match (kind, self.pending.as_mut()) {
                (FRAME_HEADERS, None) => match split_headers_payload(flags, payload) {
                    // A whole block in one frame: one needing no change (nearly every one)
                    // goes on as it came.
                    Some((priority, fragment)) if flags & FLAG_END_HEADERS != 0 => {
                        match rewrite_authority(fragment) {
                            None => self.ready.extend_from_slice(&frame),
                            Some(rewritten) => {
                                self.write_block(stream_id, flags, priority, &rewritten)
                            }
                        }
                    }
                    Some((priority, fragment)) => {
                        self.pending = Some(PendingBlock {
                            stream_id,
                            flags,
                            priority,
                            fragment: fragment.to_vec(),
                        });
                    }
                    None => self.ready.extend_from_slice(&frame),
                },
                (FRAME_CONTINUATION, Some(block)) if block.stream_id == stream_id => {
                    block.fragment.extend_from_slice(payload);
                    if block.fragment.len() > HEADER_BLOCK_BYTES_MAX {
                        self.give_up();
                        return self.process();
                    }
                    if flags & FLAG_END_HEADERS != 0 {
                        self.finish_block();
                    }
                }
                // A HEADERS frame inside a header block, or a CONTINUATION outside one (or for
                // another stream): protocol errors for h2 to report.
                (_, Some(_)) => {
                    self.give_up();
                    self.ready.extend_from_slice(&frame);
                    return self.process();
                }
                (_, None) => self.ready.extend_from_slice(&frame),
            }
        }
    }

    /// Emits the completed pending block, rewritten if it needs it.
    fn finish_block(&mut self) {
        let block = self.pending.take().expect("a pending block");
        let rewritten = rewrite_authority(&block.fragment).unwrap_or(block.fragment);
        self.write_block(block.stream_id, block.flags, block.priority, &rewritten);
    }

    /// Emits a whole header block as HEADERS (+ CONTINUATION) frames, without padding; `flags`
    /// are those of the block's HEADERS frame.
    fn write_block(
        &mut self,
        stream_id: [u8; 4],
        flags: u8,
        priority: Option<[u8; 5]>,
        block: &[u8],
    ) {
        let mut flags = (flags & !FLAG_PADDED) & !FLAG_END_HEADERS;
        let priority_bytes = priority.map_or(0, |_| 5);
        let first_capacity = FRAME_PAYLOAD_BYTES_MIN_MAX - priority_bytes;
        let (first, mut rest) = block.split_at(block.len().min(first_capacity));
        if rest.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        let mut payload = Vec::with_capacity(priority_bytes + first.len());
        if let Some(priority) = priority {
            payload.extend_from_slice(&priority);
        }
        payload.extend_from_slice(first);
        self.write_frame(FRAME_HEADERS, flags, stream_id, &payload);
        while !rest.is_empty() {
            let (piece, remaining) = rest.split_at(rest.len().min(FRAME_PAYLOAD_BYTES_MIN_MAX));
            rest = remaining;
            let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
            self.write_frame(FRAME_CONTINUATION, flags, stream_id, piece);
        }
    }

    /// Emits the pending block's fragment as it came (lost framing is h2's error to report).
    fn give_up(&mut self) {
        if let Some(block) = self.pending.take() {
            let flags = block.flags & !FLAG_PADDED;
            let mut payload = Vec::new();
            if let Some(priority) = block.priority {
                payload.extend_from_slice(&priority);
            }
            payload.extend_from_slice(&block.fragment);
            let length = payload.len().min(0x00ff_ffff);
            self.write_frame(FRAME_HEADERS, flags, block.stream_id, &payload[..length]);
        }
        self.pass_through = true;
    }

    fn write_frame(&mut self, kind: u8, flags: u8, stream_id: [u8; 4], payload: &[u8]) {
        let length = (payload.len() as u32).to_be_bytes();
        self.ready.extend_from_slice(&length[1..]);
        self.ready.extend_from_slice(&[kind, flags]);
        self.ready.extend_from_slice(&stream_id);
        self.ready.extend_from_slice(payload);
    }
}

/// Splits a HEADERS payload into its priority fields and header block fragment, dropping padding.
fn split_headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut body = payload;
    let mut padding = 0usize;
    if flags & FLAG_PADDED != 0 {
        padding = *body.first()? as usize;
        body = &body[1..];
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        priority = Some(body.get(..5)?.try_into().ok()?);
        body = &body[5..];
    }
    let end = body.len().checked_sub(padding)?;
    Some((priority, &body[..end]))
}

/// Reads an HPACK integer with an `prefix_bits`-bit prefix at `block[*at]`.
fn read_integer(block: &[u8], at: &mut usize, prefix_bits: u32) -> Option<u64> {
    let mask = (1u64 << prefix_bits) - 1;
    let mut value = u64::from(*block.get(*at)?) & mask;
    *at += 1;
    if value < mask {
        return Some(value);
    }
    let mut shift = 0u32;
    loop {
        let byte = *block.get(*at)?;
        *at += 1;
        value = value.checked_add(u64::from(byte & 0x7f).checked_shl(shift)?)?;
        shift += 7;
        if byte & 0x80 == 0 {
            return Some(value);
        }
        if shift > 56 {
            return None;
        }
    }
}

fn write_integer(out: &mut Vec<u8>, first_byte_flags: u8, prefix_bits: u32, value: u64) {
    let mask = (1u64 << prefix_bits) - 1;
    if value < mask {
        out.push(first_byte_flags | value as u8);
        return;
    }
    out.push(first_byte_flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Reads an HPACK string literal at `block[*at]`: whether it is Huffman-coded, and its bytes as
/// sent.
fn read_string<'a>(block: &'a [u8], at: &mut usize) -> Option<(bool, &'a [u8])> {
    let huffman = *block.get(*at)? & 0x80 != 0;
    let length = read_integer(block, at, 7)? as usize;
    let raw = block.get(*at..at.checked_add(length)?)?;
    *at += length;
    Some((huffman, raw))
}

/// The decoded bytes of a string literal [`read_string`] read.
fn decode_string((huffman, raw): (bool, &[u8])) -> Option<Vec<u8>> {
    if huffman {
        let mut decoded = Vec::with_capacity(raw.len() * 2);
        httlib_huffman::decode(raw, &mut decoded, httlib_huffman::DecoderSpeed::FourBits).ok()?;
        Some(decoded)
    } else {
        Some(raw.to_vec())
    }
}

fn strip_scheme(value: &[u8]) -> Option<&[u8]> {
    value
        .strip_prefix(b"http://")
        .or_else(|| value.strip_prefix(b"https://"))
}

/// Returns the block with every scheme-prefixed `:authority` literal rewritten, or `None` when
/// nothing needs to change or the block cannot be parsed (then it goes on untouched). Only
/// literal names and `:authority` values are decoded, and nothing is copied until a field
/// changes: this runs on every request's headers.
fn rewrite_authority(block: &[u8]) -> Option<Vec<u8>> {
    // Everything before the first change is `block[..start]` of that field.
    let mut out: Option<Vec<u8>> = None;
    let mut at = 0;
    while at < block.len() {
        let start = at;
        let first = block[at];
        let prefix_bits = if first & 0x80 != 0 {
            read_integer(block, &mut at, 7)?; // indexed field: nothing literal to change
            if let Some(out) = &mut out {
                out.extend_from_slice(&block[start..at]);
            }
            continue;
        } else if first & 0x40 != 0 {
            6 // literal with incremental indexing
        } else if first & 0x20 != 0 {
            read_integer(block, &mut at, 5)?; // dynamic table size update
            if let Some(out) = &mut out {
                out.extend_from_slice(&block[start..at]);
            }
            continue;
        } else {
            4 // literal without indexing / never indexed
        };
        let name_index = read_integer(block, &mut at, prefix_bits)?;
        let is_authority = if name_index == 0 {
            decode_string(read_string(block, &mut at)?)?.as_slice() == b":authority"
        } else {
            name_index == STATIC_INDEX_AUTHORITY
        };
        let value_start = at;
        let value = read_string(block, &mut at)?;
        let value = if is_authority {
            Some(decode_string(value)?)
        } else {
            None
        };
        match value.as_deref().and_then(strip_scheme) {
            Some(stripped) => {
                let out = out.get_or_insert_with(|| {
                    let mut out = Vec::with_capacity(block.len());
                    out.extend_from_slice(&block[..start]);
                    out
                });
                out.extend_from_slice(&block[start..value_start]);
                write_integer(out, 0x00, 7, stripped.len() as u64);
                out.extend_from_slice(stripped);
            }
            None => {
                if let Some(out) = &mut out {
                    out.extend_from_slice(&block[start..at]);
                }
            }
        }
    }
    out
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let count = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..count]);
                this.ready.advance(count);
                return Poll::Ready(Ok(()));
            }
            this.raw.reserve(READ_CHUNK_BYTES);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.raw) {
                Poll::Ready(Ok(read)) => {
                    if read == 0 {
                        // End of stream: hand over whatever is left as it came.
                        this.give_up();
                        this.process();
                        if this.ready.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    this.process();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal(first: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        write_integer(&mut out, 0x00, 7, value.len() as u64);
        out.extend_from_slice(value);
        out
    }

    #[test]
    fn a_scheme_prefixed_authority_is_stripped_and_other_fields_are_kept() {
        // :method GET (static 2), :authority http://127.0.0.1:2379 (incremental, static name 1),
        // a custom header as a literal with a literal name.
        let mut block = vec![0x82];
        block.extend(literal(0x41, b"http://127.0.0.1:2379"));
        block.push(0x00);
        block.extend(literal(0x00, b"x-test")[1..].to_vec());
        block.extend(literal(0x00, b"1")[1..].to_vec());
        let rewritten = rewrite_authority(&block).expect("changed");
        let mut expected = vec![0x82];
        expected.extend(literal(0x41, b"127.0.0.1:2379"));
        expected.push(0x00);
        expected.extend(literal(0x00, b"x-test")[1..].to_vec());
        expected.extend(literal(0x00, b"1")[1..].to_vec());
        assert_eq!(rewritten, expected);
    }

    #[test]
    fn a_huffman_coded_authority_is_decoded_then_stripped() {
        let mut huffman = Vec::new();
        httlib_huffman::encode(b"http://10.0.0.1:2379", &mut huffman).unwrap();
        let mut block = vec![0x41];
        write_integer(&mut block, 0x80, 7, huffman.len() as u64);
        block.extend_from_slice(&huffman);
        assert_eq!(
            rewrite_authority(&block).expect("changed"),
            literal(0x41, b"10.0.0.1:2379")
        );
    }

    #[test]
    fn a_plain_authority_or_unparsable_block_is_left_alone() {
        assert_eq!(rewrite_authority(&literal(0x41, b"127.0.0.1:2379")), None);
        assert_eq!(rewrite_authority(&[0x41, 0x7f]), None);
        // A scheme in another header's value is not ours to touch (static 4 is :path).
        assert_eq!(rewrite_authority(&literal(0x44, b"http://x")), None);
    }

    #[test]
    fn integers_round_trip_across_prefix_boundaries() {
        for value in [0u64, 30, 31, 126, 127, 128, 1337, 16_384, 1 << 40] {
            let mut out = Vec::new();
            write_integer(&mut out, 0x40, 6, value);
            let mut at = 0;
            assert_eq!(read_integer(&out, &mut at, 6), Some(value));
            assert_eq!(at, out.len());
        }
    }

    fn frame(kind: u8, flags: u8, stream: u8, payload: &[u8]) -> Vec<u8> {
        let length = (payload.len() as u32).to_be_bytes();
        let mut out = length[1..].to_vec();
        out.extend_from_slice(&[kind, flags, 0, 0, 0, stream]);
        out.extend_from_slice(payload);
        out
    }

    /// A connection as etcdctl opens it, fed a few bytes at a time: the preface, a SETTINGS
    /// frame and a DATA frame come through unchanged; the padded HEADERS frame (split over a
    /// CONTINUATION) comes out as one HEADERS frame with the scheme gone.
    #[tokio::test]
    async fn a_connection_is_rewritten_only_in_its_authority() {
        use tokio::io::AsyncReadExt;
        use tokio::io::AsyncWriteExt;

        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let mut block = vec![0x83, 0x86];
        block.extend(literal(0x41, b"http://127.0.0.1:2379"));
        let (first, second) = block.split_at(4);
        let mut padded = vec![3u8];
        padded.extend_from_slice(first);
        padded.extend_from_slice(&[0, 0, 0]);
        let data = frame(0x0, 0x1, 1, b"0123456789");
        let mut input = PREFACE.to_vec();
        input.extend(&settings);
        input.extend(frame(FRAME_HEADERS, FLAG_PADDED, 1, &padded));
        input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 1, second));
        input.extend(&data);

        let mut expected_block = vec![0x83, 0x86];
        expected_block.extend(literal(0x41, b"127.0.0.1:2379"));
        let mut expected = PREFACE.to_vec();
        expected.extend(&settings);
        expected.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &expected_block));
        expected.extend(&data);

        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for piece in input.chunks(5) {
                client.write_all(piece).await.unwrap();
            }
            client.shutdown().await.unwrap();
        });
        let mut fixed = AuthorityFix::new(server);
        let mut output = Vec::new();
        fixed.read_to_end(&mut output).await.unwrap();
        writer.await.unwrap();
        assert_eq!(output, expected);
    }

    /// Nearly every header block needs no change: a whole one (here padded, with a huffman-coded
    /// value holding a scheme under another name, and a literal-named header) goes on byte for
    /// byte, frame and padding included.
    #[tokio::test]
    async fn a_block_needing_no_change_passes_byte_for_byte() {
        use tokio::io::AsyncReadExt;
        use tokio::io::AsyncWriteExt;

        let mut huffman = Vec::new();
        httlib_huffman::encode(b"http://x/y", &mut huffman).unwrap();
        let mut block = vec![0x83, 0x86, 0x44];
        write_integer(&mut block, 0x80, 7, huffman.len() as u64);
        block.extend_from_slice(&huffman);
        block.push(0x40);
        block.extend(literal(0x00, b"x-test")[1..].to_vec());
        block.extend(literal(0x00, b"http://z")[1..].to_vec());
        block.extend(literal(0x41, b"127.0.0.1:2379"));
        assert_eq!(rewrite_authority(&block), None);
        let mut padded = vec![2u8];
        padded.extend_from_slice(&block);
        padded.extend_from_slice(&[0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_END_HEADERS,
            1,
            &padded,
        ));
        input.extend(frame(0x0, 0x1, 1, b"0123456789"));

        let (mut client, server) = tokio::io::duplex(64);
        let sent = input.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
        });
        let mut output = Vec::new();
        AuthorityFix::new(server)
            .read_to_end(&mut output)
            .await
            .unwrap();
        writer.await.unwrap();
        assert_eq!(output, input);
    }

    #[test]
    fn headers_padding_and_priority_are_split_off() {
        let payload = [2u8, 1, 2, 3, 4, 5, 0xaa, 0xbb, 0, 0];
        let (priority, fragment) =
            split_headers_payload(FLAG_PADDED | FLAG_PRIORITY, &payload).unwrap();
        assert_eq!(priority, Some([1, 2, 3, 4, 5]));
        assert_eq!(fragment, &[0xaa, 0xbb]);
    }
}
