//! Hyper's runtime seams on async-io and async-std: I/O, executor, timer.
//!
//! hyper 1.x names no runtime; a client connection needs an I/O type
//! implementing its `rt::Read`/`rt::Write`, an `rt::Executor` for the tasks
//! it spawns (HTTP/2 stream plumbing), and an `rt::Timer` for keepalive
//! pings. These three adapters supply them from the futures-io world.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::io::{AsyncRead, AsyncWrite};
use hyper::rt::{Executor, Sleep, Timer};

/// Largest read handed to the socket at once. Reads go through a scratch
/// buffer (see [`FuturesIo`]), so this bounds the copy, not the throughput:
/// hyper asks again while data is available.
const SCRATCH: usize = 64 * 1024;

/// A futures-io byte stream (e.g. `async_io::Async<TcpStream>`) as hyper's
/// `rt::Read + rt::Write`.
///
/// Hyper hands reads a possibly uninitialised buffer; filling it in place
/// would need `unsafe`, which this crate forbids. Bytes are read into an
/// owned scratch buffer and copied with the safe `put_slice` instead: one
/// memcpy per read, small next to the syscall.
#[derive(Debug)]
pub(crate) struct FuturesIo<T> {
    inner: T,
    scratch: Vec<u8>,
}

impl<T> FuturesIo<T> {
    pub(crate) fn new(inner: T) -> FuturesIo<T> {
        FuturesIo { inner, scratch: Vec::new() }
    }
}

impl<T: AsyncRead + Unpin> hyper::rt::Read for FuturesIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = buf.remaining().min(SCRATCH);
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.scratch.len() < want {
            this.scratch.resize(want, 0);
        }
        let n = match Pin::new(&mut this.inner).poll_read(cx, &mut this.scratch[..want]) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        // `n <= want <= remaining`, so `put_slice` cannot overflow.
        buf.put_slice(&this.scratch[..n]);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for FuturesIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // futures-io has no way to ask; async-io's TCP stream forwards
        // vectored writes to `writev`, which is what matters here.
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

/// Hyper's executor: spawns onto async-std's global executor.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AsyncStdExecutor;

impl<F> Executor<F> for AsyncStdExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        // Detached: hyper's tasks end with their connection or stream.
        drop(async_std::task::spawn(fut));
    }
}

/// Hyper's timer (HTTP/2 keepalive pings and their timeouts) on async-io.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AsyncIoTimer;

/// One async-io timer as hyper's `Sleep`.
struct TimerSleep(async_io::Timer);

impl Future for TimerSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.get_mut().0).poll(cx).map(drop)
    }
}

impl Sleep for TimerSleep {}

impl Timer for AsyncIoTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(TimerSleep(async_io::Timer::after(duration)))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(TimerSleep(async_io::Timer::at(deadline)))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        // Keepalive re-arms its timer after every ping; reuse the timer
        // rather than allocate a new one each time.
        match sleep.as_mut().downcast_mut_pin::<TimerSleep>() {
            Some(timer) => timer.get_mut().0.set_at(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_sleeps_and_resets() {
        async_std::task::block_on(async {
            let timer = AsyncIoTimer;
            let started = Instant::now();
            timer.sleep(Duration::from_millis(20)).await;
            assert!(started.elapsed() >= Duration::from_millis(20));

            // A far deadline pulled in by `reset` fires at the new one.
            let mut sleep = timer.sleep(Duration::from_secs(3600));
            let started = Instant::now();
            timer.reset(&mut sleep, Instant::now() + Duration::from_millis(20));
            sleep.await;
            assert!(started.elapsed() < Duration::from_secs(5));
        });
    }

    #[cfg(unix)]
    #[test]
    fn io_adapter_reads_and_writes() {
        use hyper::rt::{Read as _, Write as _};

        async_std::task::block_on(async {
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            let mut a = FuturesIo::new(async_io::Async::new(a).unwrap());
            let mut b = FuturesIo::new(async_io::Async::new(b).unwrap());
            let wrote =
                futures::future::poll_fn(|cx| Pin::new(&mut a).poll_write(cx, b"hello")).await;
            assert_eq!(wrote.unwrap(), 5);
            let mut storage = [0u8; 3];
            let mut buf = hyper::rt::ReadBuf::new(&mut storage);
            futures::future::poll_fn(|cx| Pin::new(&mut b).poll_read(cx, buf.unfilled()))
                .await
                .unwrap();
            // The read is capped at what the caller's buffer holds.
            assert_eq!(buf.filled(), b"hel");
            futures::future::poll_fn(|cx| Pin::new(&mut a).poll_shutdown(cx)).await.unwrap();
        });
    }
}
