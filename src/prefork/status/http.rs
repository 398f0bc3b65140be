//! Just enough HTTP/1.x for the status endpoint: one GET per connection,
//! parsed by `httparse` (no hand-written header parsing), answered with a
//! body of known length and `Connection: close`.

/// A request's headers may take at most this many bytes: past it, 431.
pub(super) const MAX_REQUEST: usize = 8 * 1024;

/// Headers a request may have: past it, 431.
const MAX_HEADERS: usize = 32;

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Parsed {
    /// The request line and headers are complete.
    Request { method: String, path: String },
    /// More bytes are needed.
    Partial,
    /// The client is answered with this and the connection closed.
    Refused(Response),
}

/// Parses the bytes of a request read so far.
pub(super) fn parse(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {
            let (Some(method), Some(target)) = (request.method, request.path) else {
                return Parsed::Refused(Response::text(400, "bad request\n"));
            };
            // The path without its query: `/metrics?x=1` is `/metrics`.
            let path = target.split('?').next().unwrap_or(target);
            Parsed::Request {
                method: method.to_owned(),
                path: path.to_owned(),
            }
        }
        Ok(httparse::Status::Partial) if bytes.len() >= MAX_REQUEST => {
            Parsed::Refused(Response::text(431, "request header fields too large\n"))
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            Parsed::Refused(Response::text(431, "request header fields too large\n"))
        }
        Err(_) => Parsed::Refused(Response::text(400, "bad request\n")),
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Response {
    pub(super) code: u16,
    pub(super) content_type: &'static str,
    pub(super) body: String,
}

impl Response {
    /// A plain-text answer.
    pub(super) fn text(code: u16, body: impl Into<String>) -> Response {
        Response {
            code,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    /// The bytes on the wire: status line, headers, body (`head`: no body,
    /// for a HEAD request).
    pub(super) fn bytes(&self, head: bool) -> Vec<u8> {
        let reason = match self.code {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Unknown",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n",
            self.code,
            self.content_type,
            self.body.len()
        );
        if self.code == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_get_and_refuses_what_is_not_http_or_too_big() {
        assert_eq!(
            parse(b"GET /metrics?a=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parsed::Request {
                method: "GET".into(),
                path: "/metrics".into()
            }
        );
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost"), Parsed::Partial);
        let Parsed::Refused(bad) = parse(b"\x16\x03\x01 not http\r\n\r\n") else {
            panic!("garbage is refused");
        };
        assert_eq!(bad.code, 400);
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_REQUEST, b'a');
        let Parsed::Refused(big) = parse(&huge) else {
            panic!("an endless header is refused");
        };
        assert_eq!(big.code, 431);
        let many: String = (0..40).map(|i| format!("X{i}: y\r\n")).collect();
        let Parsed::Refused(many) = parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes())
        else {
            panic!("too many headers are refused");
        };
        assert_eq!(many.code, 431);
    }

    #[test]
    fn an_answer_has_its_length_and_closes() {
        let bytes = Response::text(200, "ok\n").bytes(false);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nok\n"));
        let head = String::from_utf8(Response::text(200, "ok\n").bytes(true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"));
    }
}
