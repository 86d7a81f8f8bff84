//! Closed vocabularies of the protocol: message kinds and error codes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a message body holds (`kind` of a `send` and a `msg`).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Text; the body is a JSON string.
    Text,
    /// An image reference (the bytes never travel through Tern).
    Image,
    /// A file reference.
    File,
    /// A voice clip reference.
    Voice,
    /// Anything the application defines.
    Custom,
}

impl Kind {
    /// Every kind, for tests and exhaustive listings.
    pub const ALL: [Kind; 5] = [
        Kind::Text,
        Kind::Image,
        Kind::File,
        Kind::Voice,
        Kind::Custom,
    ];

    /// The wire name, e.g. `"text"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Image => "image",
            Kind::File => "file",
            Kind::Voice => "voice",
            Kind::Custom => "custom",
        }
    }

    /// The kind with wire name `s` (case-sensitive).
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `code` of an `error` or `send_err` frame (and of HTTP errors).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or request is malformed or breaks a rule of the protocol.
    BadRequest,
    /// Missing, expired, forged or revoked credentials.
    Unauthorized,
    /// The sender is not a member of the conversation.
    NotMember,
    /// The named user does not exist.
    NoSuchUser,
    /// The named group does not exist.
    NoSuchGroup,
    /// A body or frame beyond its limit.
    TooLarge,
    /// The sender exceeded a rate limit.
    RateLimited,
    /// A before-send webhook refused the message.
    Rejected,
    /// Storage failed; nothing was stored.
    Unavailable,
}

impl ErrorCode {
    /// Every code, for tests and exhaustive listings.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::NotMember,
        ErrorCode::NoSuchUser,
        ErrorCode::NoSuchGroup,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Rejected,
        ErrorCode::Unavailable,
    ];

    /// The wire name, e.g. `"bad_request"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotMember => "not_member",
            ErrorCode::NoSuchUser => "no_such_user",
            ErrorCode::NoSuchGroup => "no_such_group",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Rejected => "rejected",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    /// The code with wire name `s` (case-sensitive).
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_match_serde() {
        for k in Kind::ALL {
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
            assert_eq!(Kind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::from_str::<Kind>(&format!("\"{k}\"")).unwrap(),
                k
            );
        }
        assert_eq!(Kind::parse("Text"), None);
        assert_eq!(Kind::parse("gif"), None);
    }

    #[test]
    fn error_code_names_match_serde() {
        for c in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.as_str())
            );
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(ErrorCode::TooLarge.as_str(), "too_large");
        assert_eq!(ErrorCode::parse("nope"), None);
    }
}
