//! JSON answers for requests the HTTP parser rejects before any handler runs.
//!
//! hyper answers a request it cannot parse (a malformed request line or header, headers too
//! large, a URI too long) on its own: a `4xx` head with `content-length: 0` and no body, and
//! closes the connection. [`JsonErrors`] wraps the listener so that such an answer — the only
//! `4xx` the server sends without a `content-type`, since the API's own errors are JSON —
//! leaves with the API's JSON error body instead: every error a client sees has the same shape.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A listener whose connections answer protocol errors with a JSON body.
#[derive(Debug)]
pub struct JsonErrors<L>(pub L);

impl<L: Listener> Listener for JsonErrors<L> {
    type Io = JsonErrorIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (
            JsonErrorIo {
                inner: io,
                pending: None,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A connection that rewrites hyper's bodiless `4xx` answers (see the module docs).
#[derive(Debug)]
pub struct JsonErrorIo<T> {
    inner: T,
    /// A rewritten answer being written: its bytes, how many are out, and how many of the
    /// caller's bytes it stands for.
    pending: Option<(Vec<u8>, usize, usize)>,
}

/// The JSON answer standing for `head`, if `head` is one of hyper's bodiless `4xx` answers.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let end = text.find("\r\n\r\n")?;
    if !text.starts_with("HTTP/1.1 4") || end + 4 != text.len() {
        return None;
    }
    let lines: Vec<&str> = text[..end].split("\r\n").collect();
    let lower: Vec<String> = lines.iter().map(|l| l.to_ascii_lowercase()).collect();
    if !lower.iter().any(|l| l == "content-length: 0")
        || lower.iter().any(|l| l.starts_with("content-type:"))
    {
        return None;
    }
    let status = lines.first()?.get(9..)?;
    let code = match status.get(..3)? {
        "408" => "timeout",
        "413" => "too_large",
        "414" => "uri_too_long",
        "431" => "headers_too_large",
        _ => "bad_request",
    };
    let body = serde_json::json!({
        "error": { "code": code, "message": format!("the request is not valid HTTP ({status})") }
    })
    .to_string();
    let mut answer = String::new();
    for (line, lowered) in lines.iter().zip(&lower) {
        if !lowered.starts_with("content-length:") {
            answer.push_str(line);
            answer.push_str("\r\n");
        }
    }
    answer.push_str("content-type: application/json\r\n");
    answer.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    Some(answer.into_bytes())
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrorIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrorIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            match rewrite(buf) {
                Some(answer) => this.pending = Some((answer, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        while let Some((answer, written, stands_for)) = &mut this.pending {
            if *written == answer.len() {
                let consumed = *stands_for;
                this.pending = None;
                return Poll::Ready(Ok(consumed));
            }
            match Pin::new(&mut this.inner).poll_write(cx, &answer[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(0))
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
    use super::rewrite;

    #[test]
    fn rewrites_only_bodiless_client_errors() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let answer = String::from_utf8(rewrite(hyper).expect("rewritten")).expect("text");
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\nconnection: close\r\n"));
        assert!(answer.contains("content-type: application/json\r\n"));
        assert!(answer.ends_with(
            r#"{"error":{"code":"bad_request","message":"the request is not valid HTTP (400 Bad Request)"}}"#
        ));
        let ours = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n";
        assert!(rewrite(ours).is_none());
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nextra";
        assert!(rewrite(with_body).is_none());
    }
}
