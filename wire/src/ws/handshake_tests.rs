use super::*;

/// The sample key of RFC 6455 1.3.
const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn request(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {RFC_KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A request built from explicit lines, for cases that drop or change a
/// required header.
fn lines(request_line: &str, headers: &[&str]) -> String {
    let mut s = format!("{request_line}\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s
}

const HOST: &str = "Host: example.com";
const UPGRADE: &str = "Upgrade: websocket";
const CONNECTION: &str = "Connection: Upgrade";
const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
const VERSION: &str = "Sec-WebSocket-Version: 13";

fn parse_ok(req: &str) -> (Handshake, usize) {
    match parse_request(req.as_bytes()) {
        Ok(Some(r)) => r,
        other => panic!("expected a handshake, got {other:?}"),
    }
}

fn parse_err(req: &str) -> HandshakeError {
    match parse_request(req.as_bytes()) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn accept_key_matches_rfc_sample() {
    assert_eq!(accept_key(RFC_KEY), RFC_ACCEPT);
}

#[test]
fn minimal_request_defaults_to_json_without_echo() {
    let req = request("");
    let (hs, consumed) = parse_ok(&req);
    assert_eq!(consumed, req.len());
    assert_eq!(hs.subprotocol, Subprotocol::Json);
    assert!(!hs.echo_subprotocol);
    assert_eq!(hs.key, RFC_KEY);
}

#[test]
fn consumed_excludes_bytes_after_the_request() {
    let req = request("");
    let mut bytes = req.clone().into_bytes();
    bytes.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
    let (_, consumed) = parse_request(&bytes).unwrap().unwrap();
    assert_eq!(consumed, req.len());
}

#[test]
fn every_prefix_is_incomplete() {
    let req = request("Sec-WebSocket-Protocol: tern.v1.rkyv\r\n");
    for n in 0..req.len() {
        assert_eq!(
            parse_request(&req.as_bytes()[..n]),
            Ok(None),
            "prefix of {n} bytes"
        );
    }
    assert!(parse_request(req.as_bytes()).unwrap().is_some());
}

#[test]
fn query_string_is_allowed() {
    let req = request("").replacen("GET /ws ", "GET /ws?v=1&x=y ", 1);
    parse_ok(&req);
}

#[test]
fn header_names_and_tokens_are_case_insensitive_lists() {
    let req = lines(
        "GET /ws HTTP/1.1",
        &[
            "host: a",
            "UPGRADE: foo, WebSocket",
            "connection: keep-alive, UPGRADE",
            "sec-websocket-key:   dGhlIHNhbXBsZSBub25jZQ==  ",
            "sec-websocket-version: 13",
        ],
    );
    let (hs, _) = parse_ok(&req);
    assert_eq!(hs.key, RFC_KEY);
}

#[test]
fn connection_may_span_several_lines() {
    let req = lines(
        "GET /ws HTTP/1.1",
        &[
            HOST,
            UPGRADE,
            "Connection: keep-alive",
            "Connection: upgrade",
            KEY,
            VERSION,
        ],
    );
    parse_ok(&req);
}

#[test]
fn known_subprotocol_is_selected_and_echoed() {
    let (hs, _) = parse_ok(&request("Sec-WebSocket-Protocol: tern.v1.rkyv\r\n"));
    assert_eq!(hs.subprotocol, Subprotocol::Rkyv);
    assert!(hs.echo_subprotocol);
    let (hs, _) = parse_ok(&request("Sec-WebSocket-Protocol: tern.v1.json\r\n"));
    assert_eq!(hs.subprotocol, Subprotocol::Json);
    assert!(hs.echo_subprotocol);
}

#[test]
fn first_known_offer_wins_across_lines() {
    let (hs, _) = parse_ok(&request(
        "Sec-WebSocket-Protocol: chat, v2.x\r\nSec-WebSocket-Protocol: foo , tern.v1.rkyv, tern.v1.json\r\n",
    ));
    assert_eq!(hs.subprotocol, Subprotocol::Rkyv);
    assert!(hs.echo_subprotocol);
    let (hs, _) = parse_ok(&request(
        "Sec-WebSocket-Protocol: tern.v1.json\r\nSec-WebSocket-Protocol: tern.v1.rkyv\r\n",
    ));
    assert_eq!(hs.subprotocol, Subprotocol::Json);
}

#[test]
fn only_unknown_subprotocols_means_json_without_echo() {
    let (hs, _) = parse_ok(&request("Sec-WebSocket-Protocol: chat, TERN.V1.RKYV\r\n"));
    assert_eq!(hs.subprotocol, Subprotocol::Json);
    assert!(!hs.echo_subprotocol);
}

#[test]
fn wrong_path_is_not_found() {
    assert_eq!(
        parse_err(&request("").replacen("/ws", "/chat", 1)),
        HandshakeError::NotFound
    );
    assert_eq!(
        parse_err(&request("").replacen("/ws", "/ws/", 1)),
        HandshakeError::NotFound
    );
    assert_eq!(
        parse_err(&request("").replacen("/ws", "/wsx", 1)),
        HandshakeError::NotFound
    );
}

#[test]
fn other_methods_are_not_allowed() {
    assert_eq!(
        parse_err(&request("").replacen("GET", "POST", 1)),
        HandshakeError::MethodNotAllowed
    );
}

#[test]
fn http_1_0_is_bad_request() {
    let req = request("").replacen("HTTP/1.1", "HTTP/1.0", 1);
    assert!(matches!(parse_err(&req), HandshakeError::BadRequest(_)));
}

#[test]
fn garbage_is_bad_request() {
    assert!(matches!(
        parse_err("\x16\x03\x01\x02\x00\r\n\r\n"),
        HandshakeError::BadRequest(_)
    ));
    assert!(matches!(
        parse_err("GET /ws HTTP/1.1\r\nBad Header\r\n\r\n"),
        HandshakeError::BadRequest(_)
    ));
}

#[test]
fn missing_required_headers_are_bad_request() {
    let all = [HOST, UPGRADE, CONNECTION, KEY, VERSION];
    // Dropping the version is 426, tested below; every other one is 400.
    for skip in [HOST, UPGRADE, CONNECTION, KEY] {
        let headers: Vec<&str> = all.iter().copied().filter(|h| *h != skip).collect();
        let err = parse_err(&lines("GET /ws HTTP/1.1", &headers));
        assert!(
            matches!(err, HandshakeError::BadRequest(_)),
            "without {skip}: {err:?}"
        );
    }
}

#[test]
fn wrong_upgrade_or_connection_is_bad_request() {
    for (from, to) in [
        (UPGRADE, "Upgrade: h2c"),
        (CONNECTION, "Connection: keep-alive"),
    ] {
        let err = parse_err(&request("").replacen(from, to, 1));
        assert!(
            matches!(err, HandshakeError::BadRequest(_)),
            "{to}: {err:?}"
        );
    }
}

#[test]
fn bad_keys_are_bad_request() {
    for key in [
        "",
        "not base64!",
        "dGhlIHNhbXBsZSBub25j",
        "dGhlIHNhbXBsZSBub25jZSBsb25nZXI=",
    ] {
        let req = request("").replacen(RFC_KEY, key, 1);
        assert!(
            matches!(parse_err(&req), HandshakeError::BadRequest(_)),
            "key {key:?}"
        );
    }
    let twice = request(&format!("{KEY}\r\n"));
    assert!(matches!(parse_err(&twice), HandshakeError::BadRequest(_)));
}

#[test]
fn missing_or_wrong_version_is_upgrade_required() {
    let without = lines("GET /ws HTTP/1.1", &[HOST, UPGRADE, CONNECTION, KEY]);
    assert_eq!(parse_err(&without), HandshakeError::UpgradeRequired);
    for v in ["8", "14", "13, 8", ""] {
        let req = request("").replacen(VERSION, &format!("Sec-WebSocket-Version: {v}"), 1);
        assert_eq!(
            parse_err(&req),
            HandshakeError::UpgradeRequired,
            "version {v:?}"
        );
    }
}

#[test]
fn request_body_is_bad_request() {
    let err = parse_err(&request("Content-Length: 5\r\n"));
    assert!(matches!(err, HandshakeError::BadRequest(_)));
    let err = parse_err(&request("Transfer-Encoding: chunked\r\n"));
    assert!(matches!(err, HandshakeError::BadRequest(_)));
    parse_ok(&request("Content-Length: 0\r\n"));
}

#[test]
fn oversized_request_is_too_large() {
    let filler = format!("X-Filler: {}\r\n", "a".repeat(HANDSHAKE_BYTES_MAX));
    let req = request(&filler);
    assert_eq!(parse_err(&req), HandshakeError::TooLarge);
    // Also while still incomplete: the limit is reached without a blank line.
    let partial = &req.as_bytes()[..HANDSHAKE_BYTES_MAX];
    assert_eq!(parse_request(partial), Err(HandshakeError::TooLarge));
    assert_eq!(parse_request(&partial[..HANDSHAKE_BYTES_MAX - 1]), Ok(None));
}

#[test]
fn too_many_headers_is_too_large() {
    let many: String = (0..HANDSHAKE_HEADERS_MAX)
        .map(|i| format!("X-{i}: v\r\n"))
        .collect();
    assert_eq!(parse_err(&request(&many)), HandshakeError::TooLarge);
}

#[test]
fn accept_response_is_rfc_shaped() {
    let (hs, _) = parse_ok(&request(""));
    let text = String::from_utf8(accept_response(&hs.key, &hs)).unwrap();
    assert_eq!(
        text,
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {RFC_ACCEPT}\r\n\r\n"
        )
    );
    let (hs, _) = parse_ok(&request("Sec-WebSocket-Protocol: tern.v1.rkyv\r\n"));
    let text = String::from_utf8(accept_response(&hs.key, &hs)).unwrap();
    assert!(
        text.ends_with("\r\nSec-WebSocket-Protocol: tern.v1.rkyv\r\n\r\n"),
        "{text}"
    );
}

/// Parse an HTTP response with httparse; returns status, headers, body.
fn parse_response(bytes: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let n = resp.parse(bytes).unwrap().unwrap();
    let hs = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8(h.value.to_vec()).unwrap(),
            )
        })
        .collect();
    (resp.code.unwrap(), hs, bytes[n..].to_vec())
}

#[test]
fn error_responses_have_status_length_and_close() {
    let cases = [
        (HandshakeError::BadRequest("missing Host"), 400),
        (HandshakeError::NotFound, 404),
        (HandshakeError::MethodNotAllowed, 405),
        (HandshakeError::UpgradeRequired, 426),
        (HandshakeError::TooLarge, 431),
    ];
    for (err, status) in cases {
        let (code, headers, body) = parse_response(&error_response(&err));
        assert_eq!(code, status);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("connection"), Some("close"));
        assert_eq!(get("content-length"), Some(body.len().to_string().as_str()));
        assert!(!body.is_empty());
        assert_eq!(
            get("sec-websocket-version"),
            (status == 426).then_some("13")
        );
        assert_eq!(get("allow"), (status == 405).then_some("GET"));
    }
    let (_, _, body) = parse_response(&error_response(&HandshakeError::BadRequest("missing Host")));
    assert_eq!(body, b"missing Host\n");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// Randomly cased header name.
    fn cased(name: &'static str) -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<bool>(), name.len()).prop_map(move |up| {
            name.chars()
                .zip(up)
                .map(|(c, u)| {
                    if u {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any valid request (header names in any case and order, extra
        /// headers, any offered subprotocols, bytes after it) parses to the
        /// key and subprotocol it carries, and its 101 answer carries the
        /// matching accept key.
        #[test]
        fn valid_requests_parse(
            names in (cased("host"), cased("upgrade"), cased("connection"), cased("sec-websocket-key"), cased("sec-websocket-version")),
            nonce in any::<[u8; 16]>(),
            offers in proptest::collection::vec(prop_oneof![
                Just("tern.v1.json"), Just("tern.v1.rkyv"), Just("chat"), Just("TERN.V1.JSON"),
            ], 0..4),
            extra in proptest::collection::vec(("x-[a-z]{1,8}", "[ -~]{0,20}"), 0..4),
            order in any::<proptest::sample::Index>(),
            trailing in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let key = base64::engine::general_purpose::STANDARD.encode(nonce);
            let mut headers = vec![
                format!("{}: example.com", names.0),
                format!("{}: websocket", names.1),
                format!("{}: keep-alive, Upgrade", names.2),
                format!("{}: {key}", names.3),
                format!("{}: 13", names.4),
            ];
            for (n, v) in &extra {
                headers.push(format!("{n}: {}", v.trim()));
            }
            if !offers.is_empty() {
                headers.push(format!("Sec-WebSocket-Protocol: {}", offers.join(", ")));
            }
            let first = order.index(headers.len());
            headers.rotate_left(first);
            let mut req = String::from("GET /ws?x=1 HTTP/1.1\r\n");
            for h in &headers {
                req.push_str(h);
                req.push_str("\r\n");
            }
            req.push_str("\r\n");
            let mut bytes = req.clone().into_bytes();
            bytes.extend_from_slice(&trailing);

            let (hs, consumed) = parse_request(&bytes).unwrap().unwrap();
            prop_assert_eq!(consumed, req.len());
            prop_assert_eq!(&hs.key, &key);
            let known = offers.iter().find_map(|o| Subprotocol::from_name(o));
            prop_assert_eq!(hs.subprotocol, known.unwrap_or(Subprotocol::Json));
            prop_assert_eq!(hs.echo_subprotocol, known.is_some());
            let resp = String::from_utf8(accept_response(&hs.key, &hs)).unwrap();
            let accept_line = format!("Sec-WebSocket-Accept: {}\r\n", accept_key(&key));
            prop_assert!(resp.contains(&accept_line));
        }
    }
}
