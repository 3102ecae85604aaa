//! A stream wrapper that reports every successful read and write, for timers and counters.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Told about the bytes of each read that returned some, and of each
/// write that took some.
pub trait IoObserver {
    fn on_read(&self, bytes: &[u8]);

    /// Most observers only care what arrives.
    fn on_write(&self, _written: usize) {}
}

/// Counts the bytes a stream has received.
#[derive(Debug, Default)]
pub struct ByteCount(AtomicU64);

impl ByteCount {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

impl IoObserver for ByteCount {
    fn on_read(&self, bytes: &[u8]) {
        self.0.fetch_add(bytes.len() as u64, Ordering::Release);
    }
}

/// `inner`, with reads and writes reported to `observer`.
pub struct Observed<I, O> {
    inner: I,
    observer: Arc<O>,
}

impl<I, O> Observed<I, O> {
    pub fn new(inner: I, observer: Arc<O>) -> Self {
        Observed { inner, observer }
    }
}

impl<I: AsyncRead + Unpin, O: IoObserver> AsyncRead for Observed<I, O> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let fresh = &buf.filled()[before..];
            if !fresh.is_empty() {
                self.observer.on_read(fresh);
            }
        }
        result
    }
}

impl<I, O: IoObserver> Observed<I, O> {
    fn report_write(&self, result: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(written)) = result {
            if *written > 0 {
                self.observer.on_write(*written);
            }
        }
    }
}

impl<I: AsyncWrite + Unpin, O: IoObserver> AsyncWrite for Observed<I, O> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.report_write(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.report_write(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
