//! Control-socket lines: what a local client sends a VM host, and what a host answers.
//!
//! A request the host accepts must encode back to a line that decodes to the same request (the
//! client and the host agree on what was asked); a reply line may be anything a broken or hostile
//! host prints, and the client must answer it with an error, never a panic.

use ferry_host::protocol::{
    decode_message, decode_request, encode_request, MigrateRequest, Request,
};
use ferry_host::Endpoint;

pub(super) fn run(data: &[u8]) {
    if let Ok(req) = decode_request(data) {
        let line = encode_request(&req);
        let again = decode_request(line.as_bytes())
            .unwrap_or_else(|e| panic!("re-encoded request {line:?} does not decode: {e}"));
        assert_eq!(
            again, req,
            "request changed in a round trip through {line:?}"
        );
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode_message(text);
    }
}

pub(super) fn seeds() -> Vec<Vec<u8>> {
    let mut migrate = MigrateRequest::new(Endpoint::Tcp("127.0.0.1:7000".into()));
    migrate.max_bandwidth = 1 << 30;
    let mut lines: Vec<String> = [
        Request::Status,
        Request::Verify,
        Request::Stop,
        Request::Cancel,
        Request::SetBandwidth {
            bytes_per_sec: 125_000_000,
        },
        Request::Migrate(migrate),
        Request::Migrate(MigrateRequest::new(Endpoint::Unix(
            "/run/ferry/x.sock".into(),
        ))),
    ]
    .iter()
    .map(encode_request)
    .collect();
    lines.push(r#"{"v":1,"ok":{}}"#.into());
    lines.push(r#"{"ok":false,"error":"a host from before versioning"}"#.into());
    lines.into_iter().map(String::into_bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_seeds_decode() {
        for line in seeds().iter().take(7) {
            decode_request(line)
                .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(line)));
        }
    }
}
