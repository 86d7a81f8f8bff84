//! Access token verification.
//!
//! Two modes, by the low bit of the first byte:
//! - raw: the rest (lossy UTF-8) is a token. Asserts no panic, and that a
//!   token that verifies is exactly the token `mint` makes for its claims:
//!   nothing an attacker writes verifies unless the key holder minted it
//!   (no malleable encodings, no second form of a valid token).
//! - mint: claims from the input are minted; the token verifies to those
//!   claims (before expiry, for the bound device), and changing any one byte
//!   of it makes it fail.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::{token_key, TOKEN_DEVICE, TOKEN_MODE_MINT, TOKEN_NOW_MS};
use tern_proto::{DeviceId, UserId};
use tern_wire::token::{mint, verify, TokenError, TOKEN_BYTES_MAX};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = token_key();
    let device = DeviceId::parse(TOKEN_DEVICE).expect("valid device id");
    if mode & 1 != TOKEN_MODE_MINT {
        let token = String::from_utf8_lossy(rest);
        if let Ok(c) = verify(&key, &token, &device, TOKEN_NOW_MS) {
            let again = mint(
                &key,
                &c.user,
                c.device.as_ref(),
                c.iat_ms,
                c.exp_ms - c.iat_ms,
            );
            assert_eq!(again, token, "a token mint did not make verified");
            assert!(TOKEN_NOW_MS < c.exp_ms);
            assert!(c.device.is_none() || c.device.as_ref() == Some(&device));
        }
        return;
    }

    // mint mode: [iat 8][ttl 8][flip index 2][flip xor 1][user len 1][user][device]
    let Some((iat, rest)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let Some((ttl, rest)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let Some((flip_at, rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let Some((&flip_xor, rest)) = rest.split_first() else {
        return;
    };
    let Some((&user_len, rest)) = rest.split_first() else {
        return;
    };
    let (user, dev) = rest.split_at(usize::from(user_len).min(rest.len()));
    let Ok(user) = UserId::parse(&String::from_utf8_lossy(user)) else {
        return;
    };
    let dev = if dev.is_empty() {
        None
    } else {
        match DeviceId::parse(&String::from_utf8_lossy(dev)) {
            Ok(d) => Some(d),
            Err(_) => return,
        }
    };
    let iat = u64::from_le_bytes(*iat);
    let ttl = u64::from_le_bytes(*ttl);
    let token = mint(&key, &user, dev.as_ref(), iat, ttl);
    assert!(token.len() <= TOKEN_BYTES_MAX);
    let conn = dev.clone().unwrap_or_else(|| device.clone());
    let exp = iat.saturating_add(ttl);
    match verify(&key, &token, &conn, iat) {
        Ok(c) => {
            assert!(iat < exp);
            assert_eq!(
                (&c.user, &c.device, c.iat_ms, c.exp_ms),
                (&user, &dev, iat, exp)
            );
        }
        Err(e) => assert!(iat >= exp && e == TokenError::Expired, "{e:?}"),
    }
    if let Some(d) = &dev {
        if d != &device {
            assert_eq!(
                verify(&key, &token, &device, iat).map(drop),
                Err(if iat < exp {
                    TokenError::WrongDevice
                } else {
                    TokenError::Expired
                })
            );
        }
    }

    // Any one-byte change is refused.
    let mut bytes = token.clone().into_bytes();
    let i = usize::from(u16::from_le_bytes(*flip_at)) % bytes.len();
    bytes[i] ^= flip_xor.max(1);
    let tampered = String::from_utf8_lossy(&bytes);
    assert!(
        verify(&key, &tampered, &conn, iat).is_err(),
        "tampered token verified"
    );
});
