//! Access tokens: HMAC-SHA256 over a compact binary payload, verified without
//! a storage read.
//!
//! # Format (v1)
//! `base64url(payload) "." base64url(HMAC-SHA256(key, base64url(payload)))`,
//! both parts without padding. The payload is
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version, [`FORMAT_VERSION`] |
//! | 8 | `iat_ms`, big-endian |
//! | 8 | `exp_ms`, big-endian |
//! | 1 + n | user id length n (1..=64), then its bytes |
//! | 1 + m | device id length m (0 = no device, else 1..=64), then its bytes |
//!
//! and nothing after. The MAC covers the payload *text*, so verification
//! checks the MAC before it decodes anything an attacker chose; a payload that
//! fails to parse after a good MAC can only come from a key holder's bug.
//!
//! Tokens are opaque to clients (PROTOCOL.md); the format may change with
//! [`FORMAT_VERSION`]. Revocation (the user was deleted after `iat_ms`) is the
//! caller's check: it needs state this module deliberately does not have.

use std::fmt;
use std::io::Read;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tern_proto::{DeviceId, UserId};

type HmacSha256 = Hmac<Sha256>;

/// The longest token `verify` looks at. Checked before any decoding so a
/// hostile client cannot make the server base64-decode or MAC a megabyte.
/// A v1 token is at most 240 bytes (see the const assert below).
pub const TOKEN_BYTES_MAX: usize = 512;

/// Version byte at the start of every payload; bumped when the layout changes
/// so an old token fails as `Malformed` rather than being misread.
pub const FORMAT_VERSION: u8 = 1;

/// Id length bound from PROTOCOL.md ("1–64 bytes"); the payload stores it in one byte.
const ID_BYTES_MAX: usize = 64;

/// HMAC-SHA256 output length.
const MAC_BYTES: usize = 32;

/// SHA-256 block size: a 32-byte HMAC key zero-padded to this length gives
/// the same MAC (RFC 2104), and lets us use the infallible `KeyInit::new`.
const HMAC_BLOCK_BYTES: usize = 64;

/// Fixed part of the payload: version, iat, exp, user length, device length.
const PAYLOAD_FIXED_BYTES: usize = 1 + 8 + 8 + 1 + 1;

/// The largest payload: both ids at their maximum length.
const PAYLOAD_BYTES_MAX: usize = PAYLOAD_FIXED_BYTES + 2 * ID_BYTES_MAX;

/// Base64 (no padding) length of `n` bytes.
const fn b64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

// Every token `mint` can produce must pass `verify`'s length bound.
const _: () = assert!(b64_len(PAYLOAD_BYTES_MAX) + 1 + b64_len(MAC_BYTES) <= TOKEN_BYTES_MAX);
// Lengths are stored in one byte.
const _: () = assert!(ID_BYTES_MAX <= u8::MAX as usize);

/// The 256-bit secret that signs tokens. `Debug` does not print it.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    /// A fresh random key from the kernel's CSPRNG (`/dev/urandom`).
    ///
    /// Fails only if `/dev/urandom` cannot be read (e.g. a chroot without
    /// `/dev`); the caller decides whether that is fatal.
    pub fn generate() -> std::io::Result<Self> {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// A key from stored bytes (e.g. read back from the data dir).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key, for storing it.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn mac(&self) -> HmacSha256 {
        let mut block = [0u8; HMAC_BLOCK_BYTES];
        block[..self.0.len()].copy_from_slice(&self.0);
        <HmacSha256 as KeyInit>::new(&block.into())
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Whose token it is.
    pub user: UserId,
    /// The device it is bound to; `None`: good for any device.
    pub device: Option<DeviceId>,
    /// When it was minted (ms since the Unix epoch); the caller compares it
    /// with the user's revocation time.
    pub iat_ms: u64,
    /// When it stops being valid (ms since the Unix epoch), exclusive.
    pub exp_ms: u64,
}

/// Why a token was refused. All of them mean `unauthorized` to a client; the
/// variants exist for logs and tests.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Too long, not `payload.signature`, bad base64 or an unreadable payload.
    #[error("malformed token")]
    Malformed,
    /// The MAC does not match: forged, tampered with, or another key's.
    #[error("bad token signature")]
    BadSignature,
    /// `now_ms >= exp_ms`.
    #[error("token expired")]
    Expired,
    /// Minted for a different device.
    #[error("token bound to another device")]
    WrongDevice,
}

/// Mint a token for `user` (bound to `device` if given), valid from `iat_ms`
/// for `ttl_ms` milliseconds. The caller bounds `ttl_ms`; an expiry past
/// `u64::MAX` saturates.
pub fn mint(
    key: &TokenKey,
    user: &UserId,
    device: Option<&DeviceId>,
    iat_ms: u64,
    ttl_ms: u64,
) -> String {
    let user = user.as_str().as_bytes();
    let device = device.map_or(&[][..], |d| d.as_str().as_bytes());
    // Validated ids are 1..=64 bytes; the asserts guard the one-byte lengths
    // against a future change of the id rules.
    assert!(
        !user.is_empty() && user.len() <= ID_BYTES_MAX,
        "user id length out of bounds"
    );
    assert!(
        device.len() <= ID_BYTES_MAX,
        "device id length out of bounds"
    );

    let mut payload = Vec::with_capacity(PAYLOAD_FIXED_BYTES + user.len() + device.len());
    payload.push(FORMAT_VERSION);
    payload.extend_from_slice(&iat_ms.to_be_bytes());
    payload.extend_from_slice(&iat_ms.saturating_add(ttl_ms).to_be_bytes());
    payload.push(user.len() as u8);
    payload.extend_from_slice(user);
    payload.push(device.len() as u8);
    payload.extend_from_slice(device);

    let mut token = URL_SAFE_NO_PAD.encode(&payload);
    let mut mac = key.mac();
    mac.update(token.as_bytes());
    let tag = mac.finalize().into_bytes();
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(tag, &mut token);
    debug_assert!(token.len() <= TOKEN_BYTES_MAX);
    token
}

/// Check `token` for a connection of `device` at time `now_ms`.
///
/// Checks, in order: length bound, shape, MAC (constant time), payload,
/// expiry, device binding. Never panics on any input.
pub fn verify(
    key: &TokenKey,
    token: &str,
    device: &DeviceId,
    now_ms: u64,
) -> Result<Claims, TokenError> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err(TokenError::Malformed);
    }
    let (payload_b64, tag_b64) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let mut tag = [0u8; MAC_BYTES];
    // `decode_slice` refuses input that does not fit; the length check refuses
    // a short tag. The engine rejects non-canonical trailing bits.
    match URL_SAFE_NO_PAD.decode_slice(tag_b64, &mut tag) {
        Ok(MAC_BYTES) => {}
        _ => return Err(TokenError::Malformed),
    }
    let mut mac = key.mac();
    mac.update(payload_b64.as_bytes());
    // `verify_slice` compares in constant time.
    mac.verify_slice(&tag)
        .map_err(|_| TokenError::BadSignature)?;

    let mut payload = [0u8; PAYLOAD_BYTES_MAX];
    let n_payload = URL_SAFE_NO_PAD
        .decode_slice(payload_b64, &mut payload)
        .map_err(|_| TokenError::Malformed)?;
    let claims = parse_payload(&payload[..n_payload]).ok_or(TokenError::Malformed)?;

    if now_ms >= claims.exp_ms {
        return Err(TokenError::Expired);
    }
    if let Some(bound) = &claims.device {
        if bound.as_str() != device.as_str() {
            return Err(TokenError::WrongDevice);
        }
    }
    Ok(claims)
}

/// Parse a v1 payload; `None` on any deviation (wrong version, bad lengths,
/// invalid ids, trailing bytes).
fn parse_payload(payload: &[u8]) -> Option<Claims> {
    let (&version, rest) = payload.split_first()?;
    if version != FORMAT_VERSION {
        return None;
    }
    let (iat, rest) = rest.split_first_chunk::<8>()?;
    let (exp, rest) = rest.split_first_chunk::<8>()?;
    let (user, rest) = split_id(rest)?;
    let (device, rest) = split_id(rest)?;
    if !rest.is_empty() {
        return None;
    }
    let iat_ms = u64::from_be_bytes(*iat);
    let exp_ms = u64::from_be_bytes(*exp);
    if exp_ms < iat_ms {
        return None;
    }
    let user = UserId::parse(std::str::from_utf8(user).ok()?).ok()?;
    let device = if device.is_empty() {
        None
    } else {
        Some(DeviceId::parse(std::str::from_utf8(device).ok()?).ok()?)
    };
    Some(Claims {
        user,
        device,
        iat_ms,
        exp_ms,
    })
}

/// Split a one-byte-length-prefixed field off the front of `bytes`.
fn split_id(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = bytes.split_first()?;
    let len = usize::from(len);
    if len > ID_BYTES_MAX || len > rest.len() {
        return None;
    }
    Some(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000_000;
    const DAY_MS: u64 = 86_400_000;

    fn key() -> TokenKey {
        TokenKey::from_bytes([7; 32])
    }
    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }
    fn dev(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    #[test]
    fn round_trip_with_device() {
        let t = mint(&key(), &user("alice"), Some(&dev("phone")), NOW, DAY_MS);
        let c = verify(&key(), &t, &dev("phone"), NOW + 1).unwrap();
        assert_eq!(c.user.as_str(), "alice");
        assert_eq!(c.device.as_ref().map(|d| d.as_str()), Some("phone"));
        assert_eq!(c.iat_ms, NOW);
        assert_eq!(c.exp_ms, NOW + DAY_MS);
    }

    #[test]
    fn round_trip_longest_ids_fits_bound() {
        let u = "u".repeat(ID_BYTES_MAX);
        let d = "d".repeat(ID_BYTES_MAX);
        let t = mint(&key(), &user(&u), Some(&dev(&d)), u64::MAX - 5, u64::MAX);
        assert!(t.len() <= TOKEN_BYTES_MAX);
        let c = verify(&key(), &t, &dev(&d), u64::MAX - 1).unwrap();
        assert_eq!(c.user.as_str(), u);
        // ttl saturates rather than wrapping into the past.
        assert_eq!(c.exp_ms, u64::MAX);
    }

    #[test]
    fn deviceless_token_is_good_for_any_device() {
        let t = mint(&key(), &user("bob"), None, NOW, DAY_MS);
        for d in ["phone", "laptop", "x"] {
            let c = verify(&key(), &t, &dev(d), NOW).unwrap();
            assert_eq!(c.device, None);
            assert_eq!(c.user.as_str(), "bob");
        }
    }

    #[test]
    fn wrong_device_is_refused() {
        let t = mint(&key(), &user("alice"), Some(&dev("phone")), NOW, DAY_MS);
        assert_eq!(
            verify(&key(), &t, &dev("laptop"), NOW),
            Err(TokenError::WrongDevice)
        );
        // A prefix of the bound device is another device.
        assert_eq!(
            verify(&key(), &t, &dev("phon"), NOW),
            Err(TokenError::WrongDevice)
        );
    }

    #[test]
    fn expiry_is_exclusive() {
        let t = mint(&key(), &user("alice"), None, NOW, 1000);
        assert!(verify(&key(), &t, &dev("p"), NOW + 999).is_ok());
        assert_eq!(
            verify(&key(), &t, &dev("p"), NOW + 1000),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&key(), &t, &dev("p"), u64::MAX),
            Err(TokenError::Expired)
        );
        let zero = mint(&key(), &user("alice"), None, NOW, 0);
        assert_eq!(
            verify(&key(), &zero, &dev("p"), NOW),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn wrong_key_is_bad_signature() {
        let t = mint(&key(), &user("alice"), None, NOW, DAY_MS);
        let other = TokenKey::from_bytes([8; 32]);
        assert_eq!(
            verify(&other, &t, &dev("p"), NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        let k = key();
        let t = mint(&k, &user("alice"), None, NOW, DAY_MS);
        let (p, s) = t.split_once('.').unwrap();
        // Re-encode a payload for another user with the original signature.
        let forged_payload = mint(
            &TokenKey::from_bytes([0; 32]),
            &user("mallory"),
            None,
            NOW,
            DAY_MS,
        );
        let (fp, _) = forged_payload.split_once('.').unwrap();
        assert_eq!(
            verify(&k, &format!("{fp}.{s}"), &dev("p"), NOW),
            Err(TokenError::BadSignature)
        );
        // Flip every payload character in turn.
        for i in 0..p.len() {
            let mut bytes = p.as_bytes().to_vec();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = format!("{}.{s}", std::str::from_utf8(&bytes).unwrap());
            let r = verify(&k, &tampered, &dev("p"), NOW);
            assert!(
                matches!(r, Err(TokenError::BadSignature)),
                "index {i}: {r:?}"
            );
        }
    }

    #[test]
    fn tampered_signature_is_refused() {
        let k = key();
        let t = mint(&k, &user("alice"), None, NOW, DAY_MS);
        let (p, s) = t.split_once('.').unwrap();
        for i in 0..s.len() {
            let mut bytes = s.as_bytes().to_vec();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = format!("{p}.{}", std::str::from_utf8(&bytes).unwrap());
            // The last character also carries unused bits, so a change there
            // may be non-canonical base64 (Malformed) rather than a bad MAC.
            assert!(verify(&k, &tampered, &dev("p"), NOW).is_err(), "index {i}");
        }
        // A truncated or extended signature is malformed.
        assert_eq!(
            verify(&k, &format!("{p}.{}", &s[..s.len() - 1]), &dev("p"), NOW),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verify(&k, &format!("{p}.{s}AA"), &dev("p"), NOW),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn garbage_and_oversize_are_malformed() {
        let k = key();
        let d = dev("p");
        for bad in ["", ".", "abc", "a.b", "a.b.c", "!!!.!!!", "\u{e9}.\u{e9}"] {
            assert_eq!(
                verify(&k, bad, &d, NOW),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
        let t = mint(&k, &user("alice"), None, NOW, DAY_MS);
        assert_eq!(
            verify(&k, &format!("{t}.x"), &d, NOW),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verify(&k, &format!("{t}="), &d, NOW),
            Err(TokenError::Malformed)
        );
        let huge = "A".repeat(TOKEN_BYTES_MAX + 1);
        assert_eq!(verify(&k, &huge, &d, NOW), Err(TokenError::Malformed));
        let huge_dotted = format!("{}.{}", "A".repeat(TOKEN_BYTES_MAX), "A".repeat(43));
        assert_eq!(
            verify(&k, &huge_dotted, &d, NOW),
            Err(TokenError::Malformed)
        );
    }

    /// A well-signed payload that does not parse (only a key holder could
    /// make one) is still refused, as Malformed.
    #[test]
    fn signed_garbage_payload_is_malformed() {
        let k = key();
        let sign = |payload: &[u8]| {
            let p = URL_SAFE_NO_PAD.encode(payload);
            let mut mac = k.mac();
            mac.update(p.as_bytes());
            format!(
                "{p}.{}",
                URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
            )
        };
        let good = mint(&k, &user("alice"), None, NOW, DAY_MS);
        let good_payload = URL_SAFE_NO_PAD
            .decode(good.split_once('.').unwrap().0)
            .unwrap();
        assert!(verify(&k, &sign(&good_payload), &dev("p"), NOW).is_ok());

        let mut wrong_version = good_payload.clone();
        wrong_version[0] = 2;
        let mut trailing = good_payload.clone();
        trailing.push(0);
        let mut bad_id = good_payload.clone();
        bad_id[18] = b' ';
        let mut exp_before_iat = good_payload.clone();
        exp_before_iat[9..17].copy_from_slice(&(NOW - 1).to_be_bytes());
        for p in [
            &wrong_version,
            &trailing,
            &bad_id,
            &exp_before_iat,
            &good_payload[..10].to_vec(),
            &vec![],
        ] {
            assert_eq!(
                verify(&k, &sign(p), &dev("p"), NOW),
                Err(TokenError::Malformed),
                "{p:?}"
            );
        }
    }

    #[test]
    fn generated_keys_differ() {
        let a = TokenKey::generate().unwrap();
        let b = TokenKey::generate().unwrap();
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_eq!(format!("{a:?}"), "TokenKey(..)");
    }

    proptest! {
        #[test]
        fn random_strings_never_verify(s in ".{0,600}") {
            prop_assert!(verify(&key(), &s, &dev("p"), NOW).is_err());
        }

        #[test]
        fn random_token_shapes_never_verify(p in "[A-Za-z0-9_-]{0,200}", s in "[A-Za-z0-9_-]{0,60}") {
            prop_assert!(verify(&key(), &[p.as_str(), s.as_str()].join("."), &dev("p"), NOW).is_err());
        }

        #[test]
        fn mint_verify_round_trip(
            u in "[A-Za-z0-9_.@-]{1,64}",
            d in proptest::option::of("[A-Za-z0-9_.@-]{1,64}"),
            iat in 0u64..u64::MAX / 2,
            ttl in 1u64..u64::MAX / 2,
        ) {
            let dv = d.as_deref().map(dev);
            let t = mint(&key(), &user(&u), dv.as_ref(), iat, ttl);
            prop_assert!(t.len() <= TOKEN_BYTES_MAX);
            let conn = dv.clone().unwrap_or_else(|| dev("any"));
            let c = verify(&key(), &t, &conn, iat).unwrap();
            prop_assert_eq!(c.user.as_str(), u.as_str());
            prop_assert_eq!(c.device.as_ref().map(|x| x.as_str()), d.as_deref());
            prop_assert_eq!(c.exp_ms, iat + ttl);
        }
    }
}
