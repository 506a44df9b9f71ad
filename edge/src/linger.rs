//! Lingering close: a server that answers before reading a request's body
//! (a `413` for an oversized upload, an early `401`) and then closes the
//! socket with unread bytes in it makes the kernel send a reset instead of
//! a FIN. The reset can reach the client before it has read the answer, so
//! the client sees "connection reset" or "broken pipe" instead of the
//! `413` it was sent.
//!
//! `Lingering` wraps an accepted socket: its shutdown sends the FIN and
//! then reads and discards what the client still sends, until it closes
//! its side or a bounded time or byte count has passed (as nginx's
//! `lingering_close`). hyper and the router's own loop both end a
//! connection through shutdown, so both get it.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The longest a closing connection is drained; a client still sending
/// after this is reset.
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// The most a closing connection drains; past it the client is reset.
pub const LINGER_BYTES: usize = 64 * 1024 * 1024;
const SCRATCH: usize = 16 * 1024;

/// An accepted socket whose shutdown lingers (see the module docs).
pub struct Lingering<S> {
    inner: S,
    state: State,
}

enum State {
    Open,
    Draining {
        until: Pin<Box<Sleep>>,
        drained: usize,
    },
    Closed,
}

impl<S> Lingering<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            state: State::Open,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Lingering<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<S> {
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
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Open => {
                    ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                    this.state = State::Draining {
                        until: Box::pin(tokio::time::sleep(LINGER_TIME)),
                        drained: 0,
                    };
                }
                State::Draining { until, drained } => {
                    if until.as_mut().poll(cx).is_ready() || *drained >= LINGER_BYTES {
                        this.state = State::Closed;
                        continue;
                    }
                    let mut scratch = [0u8; SCRATCH];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf)) {
                        Ok(()) if !buf.filled().is_empty() => *drained += buf.filled().len(),
                        // The client closed its side (or the socket failed):
                        // nothing is left to reset.
                        _ => this.state = State::Closed,
                    }
                }
                State::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    const ANSWER: &[u8] =
        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

    /// A server that answers after reading only the head of a large upload,
    /// then closes; returns what the uploading client read back.
    async fn upload_to_early_answer(linger: bool) -> io::Result<Vec<u8>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (sock, _) = listener.accept().await?;
            let mut head = [0u8; 64];
            let mut sock: Box<dyn crate::tls::Stream> = if linger {
                Box::new(Lingering::new(sock))
            } else {
                Box::new(sock)
            };
            sock.read_exact(&mut head).await?;
            sock.write_all(ANSWER).await?;
            sock.shutdown().await?;
            io::Result::Ok(())
        });
        let mut client = TcpStream::connect(addr).await?;
        // More than loopback's socket buffers hold, so the upload is still
        // being sent when the answer comes.
        let body = vec![b'x'; 32 * 1024 * 1024];
        let sent = client.write_all(&body).await;
        let mut back = Vec::new();
        let read = client.read_to_end(&mut back).await;
        // As a client does once answered; the server's drain ends on it.
        drop(client);
        server.await.expect("server task")?;
        sent?;
        read?;
        Ok(back)
    }

    #[tokio::test]
    async fn an_early_answer_reaches_a_client_still_uploading() {
        let back = upload_to_early_answer(true).await.expect("answer read");
        assert_eq!(back, ANSWER);
    }

    /// Without lingering the same exchange fails: the check above can fail.
    #[tokio::test]
    async fn without_lingering_the_client_is_reset() {
        assert!(upload_to_early_answer(false).await.is_err());
    }
}
