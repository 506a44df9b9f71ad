//! A lean HTTP/1.1 load generator for the read benchmarks: one kept-alive
//! connection per closed-loop client, each request written from a
//! template, each response read by its `Content-Length` and checked for a
//! 2xx status.
//!
//! reqwest (hyper's client, its pool, URL parsing, header maps) spends about
//! 20 µs of CPU per request — more than the cell spends answering a cached
//! read — and on the 2-core benchmark machine every microsecond of the load
//! generator is taken from the server being measured (`perf stat` counted
//! the client at 1.02 CPUs and the cell at 0.61 in `bench reads`). This is
//! what wrk does, for the requests these benchmarks send: GETs whose
//! responses carry a length.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use rand::{rngs::StdRng, SeedableRng};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::bench::Op;
use crate::bench_market::Zipf;

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// One connection per client, opened on first use and again after an
/// error or a `Connection: close`.
pub struct GetClients {
    addr: SocketAddr,
    host: String,
    conns: Vec<Mutex<Option<Conn>>>,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl GetClients {
    /// Clients of `base` (`http://host:port`, no path).
    pub fn new(base: &str, clients: usize) -> anyhow::Result<Arc<Self>> {
        let host = base
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("{base}: only http:// is supported"))?
            .trim_end_matches('/')
            .to_string();
        let addr: SocketAddr = host
            .parse()
            .with_context(|| format!("{base}: expected http://ip:port"))?;
        Ok(Arc::new(GetClients {
            addr,
            host,
            conns: (0..clients).map(|_| Mutex::new(None)).collect(),
        }))
    }

    /// `GET path` on client `client`'s connection; true for a complete 2xx
    /// response. The first failure of the process is printed.
    pub async fn get(&self, client: usize, path: &str) -> bool {
        let Some(slot) = self.conns.get(client) else {
            return false;
        };
        let mut slot = slot.lock().await;
        match self.exchange(&mut slot, path).await {
            Ok(()) => true,
            Err(e) => {
                *slot = None;
                static REPORTED: AtomicBool = AtomicBool::new(false);
                if !REPORTED.swap(true, Ordering::Relaxed) {
                    eprintln!("first failed request: GET {path}: {e:#}");
                }
                false
            }
        }
    }

    async fn exchange(&self, slot: &mut Option<Conn>, path: &str) -> anyhow::Result<()> {
        if slot.is_none() {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            *slot = Some(Conn {
                stream,
                buf: Vec::with_capacity(8192),
            });
        }
        let conn = slot.as_mut().expect("just connected");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        conn.stream.write_all(request.as_bytes()).await?;
        conn.buf.clear();
        let head_end = loop {
            if let Some(i) = find(&conn.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if conn.buf.len() > MAX_HEAD {
                bail!("response head over {MAX_HEAD} bytes");
            }
            read_more(conn).await?;
        };
        let head = Head::parse(&conn.buf[..head_end])?;
        while conn.buf.len() < head_end + head.content_length {
            read_more(conn).await?;
        }
        if conn.buf.len() > head_end + head.content_length {
            bail!("more bytes than the response's Content-Length");
        }
        if !(200..300).contains(&head.status) {
            let body = &conn.buf[head_end..];
            let body = String::from_utf8_lossy(&body[..body.len().min(300)]);
            bail!("status {}: {body}", head.status);
        }
        if head.close {
            *slot = None;
        }
        Ok(())
    }
}

async fn read_more(conn: &mut Conn) -> anyhow::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = conn.stream.read(&mut chunk).await?;
    if n == 0 {
        bail!("connection closed mid-response");
    }
    conn.buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What the load generator needs of a response head.
#[derive(Debug, PartialEq)]
struct Head {
    status: u16,
    content_length: usize,
    close: bool,
}

impl Head {
    fn parse(head: &[u8]) -> anyhow::Result<Head> {
        let text = std::str::from_utf8(head).context("response head is not UTF-8")?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
        let mut content_length = None;
        let mut close = false;
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| anyhow!("bad header line {line:?}"))?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = Some(value.parse::<usize>().context("bad Content-Length")?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("Transfer-Encoding {value:?} is not supported here");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        Ok(Head {
            status,
            content_length: content_length.ok_or_else(|| anyhow!("no Content-Length"))?,
            close,
        })
    }
}

/// `GET /v1/products/{id}` on `base`, ids drawn with `zipf`.
pub fn product_reads(base: &str, clients: usize, ids: Arc<Vec<String>>) -> anyhow::Result<Op> {
    let conns = GetClients::new(base, clients)?;
    let zipf = Arc::new(Zipf::new(ids.len()));
    Ok(Arc::new(move |c, i| {
        let mut rng = StdRng::seed_from_u64(((c as u64) << 32) ^ i);
        let path = format!("/v1/products/{}", ids[zipf.sample(&mut rng)]);
        let conns = conns.clone();
        Box::pin(async move { conns.get(c, &path).await })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_read_for_status_length_and_close() {
        let h = Head::parse(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 42\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                content_length: 42,
                close: false
            }
        );
        let h = Head::parse(
            b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((h.status, h.content_length, h.close), (413, 0, true));
        assert!(Head::parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(Head::parse(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(Head::parse(b"garbage\r\n\r\n").is_err());
    }
}
