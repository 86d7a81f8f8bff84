//! The HTTP Upgrade parser, on arbitrary bytes.
//!
//! Asserts: no panic; "need more" only below the size bound; an accepted
//! request is within the bound, every prefix of it is "need more" (so the
//! shard never refuses a request for arriving slowly), bytes after it do not
//! change the answer, its key is a 16-byte nonce, and the 101 answer is a
//! well-formed HTTP response with the right `Sec-WebSocket-Accept`; a
//! refusal has a well-formed 4xx answer.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use tern_wire::ws::handshake::{
    accept_key, accept_response, error_response, parse_request, HANDSHAKE_BYTES_MAX,
};

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(None) => assert!(data.len() < HANDSHAKE_BYTES_MAX, "buffering past the bound"),
        Ok(Some((hs, consumed))) => {
            assert!(consumed <= data.len() && consumed <= HANDSHAKE_BYTES_MAX);
            // httparse also takes bare LF line ends.
            assert!(data[..consumed].ends_with(b"\n\n") || data[..consumed].ends_with(b"\n\r\n"));
            // The request alone gives the same answer; any prefix needs more.
            assert_eq!(
                parse_request(&data[..consumed]),
                Ok(Some((hs.clone(), consumed)))
            );
            for cut in [0, consumed / 2, consumed - 1] {
                assert_eq!(
                    parse_request(&data[..cut]),
                    Ok(None),
                    "prefix of {cut} bytes"
                );
            }
            let nonce = base64::engine::general_purpose::STANDARD
                .decode(&hs.key)
                .expect("accepted key is base64");
            assert_eq!(nonce.len(), 16);

            let resp = accept_response(&hs.key, &hs);
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut r = httparse::Response::new(&mut headers);
            assert_eq!(r.parse(&resp), Ok(httparse::Status::Complete(resp.len())));
            assert_eq!(r.code, Some(101));
            let accept = r
                .headers
                .iter()
                .find(|h| h.name == "Sec-WebSocket-Accept")
                .expect("accept header");
            assert_eq!(accept.value, accept_key(&hs.key).as_bytes());
            let proto = r
                .headers
                .iter()
                .find(|h| h.name == "Sec-WebSocket-Protocol");
            assert_eq!(proto.is_some(), hs.echo_subprotocol);
            if let Some(p) = proto {
                assert_eq!(p.value, hs.subprotocol.name().as_bytes());
            }
        }
        Err(e) => {
            let resp = error_response(&e);
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut r = httparse::Response::new(&mut headers);
            let Ok(httparse::Status::Complete(head)) = r.parse(&resp) else {
                panic!("malformed error response for {e:?}");
            };
            let code = r.code.expect("status code");
            assert!((400..500).contains(&code), "{code}");
            let len = r
                .headers
                .iter()
                .find(|h| h.name == "Content-Length")
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                .expect("content length");
            assert_eq!(resp.len() - head, len);
        }
    }
});
