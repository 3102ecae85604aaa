//! Reading a whole body, the caller's or a gateway's, into one buffer within a byte limit.
//!
//! gwproxy needs both bodies whole: the request to parse it, the response
//! to wrap it. Nearly every body arrives as one chunk, so the first chunk
//! is kept as it came (no copy); only a second chunk starts a buffer.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

/// Why a body could not be read whole.
#[derive(Debug)]
pub enum BodyError {
    /// More than the limit: declared so up front, or sent so.
    TooLarge,
    /// The peer broke the connection or the framing partway through.
    Broken,
}

/// Reads `body` to its end. A declared length over `limit` fails before
/// a byte is read; trailers are dropped (neither the request's `body`
/// field nor the envelope has room for them).
pub async fn read_to_end(mut body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(BodyError::TooLarge);
    }

    let mut whole = Whole::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Broken)?;
        if let Ok(data) = frame.into_data() {
            whole.push(data, limit)?;
        }
    }
    Ok(whole.into_bytes())
}

/// Polls `future` once: its output if that was at hand, else `None`, with
/// this task's waker left with whatever `future` waits on.
pub async fn poll_once<F: Future + Unpin>(mut future: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match Pin::new(&mut future).poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// The chunks so far: none, the first one as it came, or a copy of all.
#[derive(Default)]
enum Whole {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Whole {
    fn len(&self) -> usize {
        match self {
            Whole::Empty => 0,
            Whole::One(bytes) => bytes.len(),
            Whole::Many(buffer) => buffer.len(),
        }
    }

    fn push(&mut self, data: Bytes, limit: usize) -> Result<(), BodyError> {
        if data.len() > limit - self.len() {
            return Err(BodyError::TooLarge);
        }
        match self {
            Whole::Empty => *self = Whole::One(data),
            Whole::One(first) => {
                let mut buffer = BytesMut::with_capacity(first.len() + data.len());
                buffer.extend_from_slice(first);
                buffer.extend_from_slice(&data);
                *self = Whole::Many(buffer);
            }
            Whole::Many(buffer) => buffer.extend_from_slice(&data),
        }
        Ok(())
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Whole::Empty => Bytes::new(),
            Whole::One(bytes) => bytes,
            Whole::Many(buffer) => buffer.freeze(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_chunk_is_kept_without_a_copy() {
        let chunk = Bytes::from_static(b"{\"a\":1}");
        let mut whole = Whole::default();
        whole.push(chunk.clone(), 100).unwrap();
        let bytes = whole.into_bytes();
        assert_eq!(bytes.as_ptr(), chunk.as_ptr());
    }

    #[test]
    fn chunks_are_joined_in_order() {
        let mut whole = Whole::default();
        for part in ["ab", "cd", "e"] {
            whole.push(Bytes::from_static(part.as_bytes()), 5).unwrap();
        }
        assert_eq!(whole.into_bytes(), "abcde");
    }

    #[test]
    fn a_chunk_past_the_limit_is_refused() {
        let mut whole = Whole::default();
        whole.push(Bytes::from_static(b"abc"), 5).unwrap();
        assert!(matches!(
            whole.push(Bytes::from_static(b"def"), 5),
            Err(BodyError::TooLarge)
        ));
    }

    #[test]
    fn no_chunks_are_an_empty_body() {
        assert!(Whole::default().into_bytes().is_empty());
    }
}
