//! Validated identifiers: users, groups, devices, client message ids,
//! conversations and send targets.
//!
//! Each type can only hold a value that passed its `parse`, including when it
//! is deserialized, so code that holds one never re-checks it.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ID_BYTES_MAX;

/// Why a string is not a valid identifier. The messages go to clients, so
/// they name the field and the reason but never echo the (unbounded) input.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    /// The id is the empty string.
    #[error("{field} is empty")]
    Empty {
        /// Which kind of id, e.g. `"user id"`.
        field: &'static str,
    },
    /// The id is longer than [`ID_BYTES_MAX`] bytes.
    #[error("{field} is {len} bytes long, at most {max} are allowed", max = ID_BYTES_MAX)]
    TooLong {
        /// Which kind of id.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The id has a character outside `[A-Za-z0-9_.@-]`.
    #[error("{field} contains {ch:?}; only A-Z a-z 0-9 _ . @ - are allowed")]
    BadChar {
        /// Which kind of id.
        field: &'static str,
        /// The first offending character.
        ch: char,
    },
    /// A conversation id that is neither `dm:<a>:<b>` nor `group:<id>`.
    #[error("conversation id must be dm:<user>:<user> or group:<group>")]
    ConvShape,
    /// A dm conversation id whose users are not in byte order.
    #[error("dm conversation id must list its two users in byte order (dm:<a>:<b> with a <= b)")]
    DmOrder,
    /// A send target that is none of `user:<id>`, `group:<id>` or a conversation id.
    #[error("target must be user:<id>, group:<id> or a conversation id")]
    TargetShape,
}

/// Whether `b` may appear in a user, group or device id.
fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-')
}

/// Checks the length bounds shared by every id.
fn check_len(field: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { field });
    }
    if s.len() > ID_BYTES_MAX {
        return Err(IdError::TooLong {
            field,
            len: s.len(),
        });
    }
    Ok(())
}

/// Checks a user, group or device id: 1–64 bytes of `[A-Za-z0-9_.@-]`.
fn check_charset_id(field: &'static str, s: &str) -> Result<(), IdError> {
    check_len(field, s)?;
    match s.bytes().position(|b| !is_id_byte(b)) {
        None => Ok(()),
        Some(idx) => {
            // Allowed bytes are ASCII, so `idx` is a char boundary.
            let ch = s[idx..]
                .chars()
                .next()
                .unwrap_or(char::REPLACEMENT_CHARACTER);
            Err(IdError::BadChar { field, ch })
        }
    }
}

/// Defines a validated string newtype with the usual trait set. The text is
/// shared (`Arc<str>`): an id is cloned into messages, pushes and map keys,
/// and a clone is a reference count instead of an allocation.
/// `$check` validates a `&str` and names the field in its error.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $check:path) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s` and wraps it.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                $check($field, s)?;
                Ok(Self(s.into()))
            }

            /// Validates an owned string and wraps it.
            pub fn from_string(s: String) -> Result<Self, IdError> {
                $check($field, &s)?;
                Ok(Self(s.into()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as an owned string (a copy: the text is shared).
            pub fn into_string(self) -> String {
                String::from(&*self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Hash and Eq match `str`'s (a derived single-field newtype hashes
        // its field), so maps keyed by the id can be searched with a `&str`.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::from_string(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A user id: 1–64 bytes of `[A-Za-z0-9_.@-]`.
    UserId,
    "user id",
    check_charset_id
);
id_type!(
    /// A group id: 1–64 bytes of `[A-Za-z0-9_.@-]`.
    GroupId,
    "group id",
    check_charset_id
);
id_type!(
    /// A device id: 1–64 bytes of `[A-Za-z0-9_.@-]`.
    DeviceId,
    "device id",
    check_charset_id
);
id_type!(
    /// A client message id, the sender's dedup key: 1–64 bytes of any UTF-8.
    Cmid,
    "cmid",
    check_len
);

/// A conversation: a direct chat between two users (possibly the same user
/// twice) or a group.
///
/// `Ord` is structural (all dms before all groups, dms by `(a, b)`), which is
/// not always the byte order of the [`Display`](fmt::Display) text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConvId {
    /// A direct chat. Invariant: `a <= b` in byte order; build it with
    /// [`ConvId::dm`] or [`ConvId::parse`] to keep it.
    Dm {
        /// The user that sorts first.
        a: UserId,
        /// The user that sorts second (equal to `a` in a self-dm).
        b: UserId,
    },
    /// A group conversation.
    Group(GroupId),
}

impl ConvId {
    /// The dm between `x` and `y`, in either argument order.
    pub fn dm(x: &UserId, y: &UserId) -> ConvId {
        let (a, b) = if x <= y { (x, y) } else { (y, x) };
        ConvId::Dm {
            a: a.clone(),
            b: b.clone(),
        }
    }

    /// The conversation of group `g`.
    pub fn group(g: &GroupId) -> ConvId {
        ConvId::Group(g.clone())
    }

    /// The [`Display`](fmt::Display) text in one allocation of its exact
    /// size: the send path needs it several times per message, and
    /// `to_string` grows its buffer two or three times on the way.
    pub fn to_text(&self) -> String {
        // The lengths of `Display`'s pieces: "dm:" a ":" b, or "group:" g.
        let len = match self {
            ConvId::Dm { a, b } => 4 + a.as_str().len() + b.as_str().len(),
            ConvId::Group(g) => 6 + g.as_str().len(),
        };
        let mut s = String::with_capacity(len);
        // Pushed piece by piece: `format_args!` through `Display` cost
        // three times as much on the send path (callgrind).
        match self {
            ConvId::Dm { a, b } => {
                s.push_str("dm:");
                s.push_str(a.as_str());
                s.push(':');
                s.push_str(b.as_str());
            }
            ConvId::Group(g) => {
                s.push_str("group:");
                s.push_str(g.as_str());
            }
        }
        debug_assert_eq!(s.len(), s.capacity(), "to_text capacity");
        s
    }

    /// Whether `s` is this conversation's text ([`ConvId::to_text`]),
    /// checked without building it.
    pub fn is_text(&self, s: &str) -> bool {
        match self {
            ConvId::Dm { a, b } => s
                .strip_prefix("dm:")
                .and_then(|r| r.strip_prefix(a.as_str()))
                .and_then(|r| r.strip_prefix(':'))
                .is_some_and(|r| r == b.as_str()),
            ConvId::Group(g) => s.strip_prefix("group:") == Some(g.as_str()),
        }
    }

    /// Parses `dm:<a>:<b>` (with `a <= b`) or `group:<g>`.
    pub fn parse(s: &str) -> Result<ConvId, IdError> {
        if let Some(pair) = s.strip_prefix("dm:") {
            // User ids have no ':', so the first ':' is the separator and a
            // second one fails the check of `b`.
            let (a, b) = pair.split_once(':').ok_or(IdError::ConvShape)?;
            let a = UserId::parse(a)?;
            let b = UserId::parse(b)?;
            if a > b {
                return Err(IdError::DmOrder);
            }
            Ok(ConvId::Dm { a, b })
        } else if let Some(g) = s.strip_prefix("group:") {
            Ok(ConvId::Group(GroupId::parse(g)?))
        } else {
            Err(IdError::ConvShape)
        }
    }

    /// Whether `u` is one of the two users of this dm; false for groups.
    pub fn is_dm_member(&self, u: &UserId) -> bool {
        match self {
            ConvId::Dm { a, b } => a == u || b == u,
            ConvId::Group(_) => false,
        }
    }

    /// In a dm that `me` is part of, the other user (`me` itself in a
    /// self-dm). `None` for groups and for dms without `me`.
    pub fn dm_peer(&self, me: &UserId) -> Option<&UserId> {
        match self {
            ConvId::Dm { a, b } if a == me => Some(b),
            ConvId::Dm { a, b } if b == me => Some(a),
            _ => None,
        }
    }

    /// The group, for a group conversation.
    pub fn as_group(&self) -> Option<&GroupId> {
        match self {
            ConvId::Group(g) => Some(g),
            ConvId::Dm { .. } => None,
        }
    }

    /// Whether this is a dm.
    pub fn is_dm(&self) -> bool {
        matches!(self, ConvId::Dm { .. })
    }
}

impl fmt::Display for ConvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvId::Dm { a, b } => {
                f.write_str("dm:")?;
                f.write_str(a.as_str())?;
                f.write_str(":")?;
                f.write_str(b.as_str())
            }
            ConvId::Group(g) => {
                f.write_str("group:")?;
                f.write_str(g.as_str())
            }
        }
    }
}

impl fmt::Debug for ConvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConvId({self})")
    }
}

impl FromStr for ConvId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl Serialize for ConvId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConvId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        ConvId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Where a `send` goes: `user:<id>`, `group:<id>` or a conversation id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// `user:<id>`: the dm between the sender and this user.
    User(UserId),
    /// `group:<id>`: the group's conversation.
    Group(GroupId),
    /// A conversation id (`dm:<a>:<b>`; `group:<g>` parses as [`Target::Group`]).
    Conv(ConvId),
}

impl Target {
    /// Parses the `to` of a send.
    pub fn parse(to: &str) -> Result<Target, IdError> {
        if let Some(u) = to.strip_prefix("user:") {
            Ok(Target::User(UserId::parse(u)?))
        } else if let Some(g) = to.strip_prefix("group:") {
            Ok(Target::Group(GroupId::parse(g)?))
        } else if to.starts_with("dm:") {
            Ok(Target::Conv(ConvId::parse(to)?))
        } else {
            Err(IdError::TargetShape)
        }
    }

    /// The conversation a message from `sender` to this target lands in.
    /// Membership is not checked here.
    pub fn conv_for(&self, sender: &UserId) -> ConvId {
        match self {
            Target::User(u) => ConvId::dm(sender, u),
            Target::Group(g) => ConvId::group(g),
            Target::Conv(c) => c.clone(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::User(u) => write!(f, "user:{u}"),
            Target::Group(g) => write!(f, "group:{g}"),
            Target::Conv(c) => write!(f, "{c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn ids_accept_the_allowed_charset_and_lengths() {
        for s in ["a", "Alice_01", "a.b@c-d", "0", &"x".repeat(ID_BYTES_MAX)] {
            assert_eq!(UserId::parse(s).unwrap().as_str(), s);
            assert_eq!(GroupId::parse(s).unwrap().to_string(), s);
            assert_eq!(DeviceId::parse(s).unwrap().as_str(), s);
        }
    }

    #[test]
    fn ids_reject_bad_lengths_and_chars() {
        assert_eq!(UserId::parse(""), Err(IdError::Empty { field: "user id" }));
        assert_eq!(
            GroupId::parse(&"x".repeat(ID_BYTES_MAX + 1)),
            Err(IdError::TooLong {
                field: "group id",
                len: ID_BYTES_MAX + 1
            })
        );
        assert_eq!(
            DeviceId::parse("a:b"),
            Err(IdError::BadChar {
                field: "device id",
                ch: ':'
            })
        );
        assert_eq!(
            UserId::parse("é"),
            Err(IdError::BadChar {
                field: "user id",
                ch: 'é'
            })
        );
        for bad in [
            "a b",
            "a/b",
            "a\0",
            "ä",
            "a\u{1F600}",
            "a+b",
            "a,b",
            "\"",
            "a\n",
        ] {
            assert!(UserId::parse(bad).is_err(), "{bad:?} accepted");
        }
        // 64 bytes but fewer chars is still measured in bytes.
        assert!(matches!(
            UserId::parse(&"é".repeat(33)),
            Err(IdError::TooLong { len: 66, .. })
        ));
    }

    #[test]
    fn id_errors_name_the_field() {
        let msg = UserId::parse("a b").unwrap_err().to_string();
        assert!(msg.contains("user id") && msg.contains("' '"), "{msg}");
        let msg = Cmid::parse("").unwrap_err().to_string();
        assert_eq!(msg, "cmid is empty");
    }

    #[test]
    fn cmid_allows_any_utf8_within_bounds() {
        for s in ["a b:c/ä😀", "x", &"é".repeat(32)] {
            assert_eq!(Cmid::parse(s).unwrap().as_str(), s);
        }
        assert!(Cmid::parse("").is_err());
        assert!(Cmid::parse(&"x".repeat(65)).is_err());
        assert!(Cmid::parse(&"é".repeat(33)).is_err());
    }

    #[test]
    fn ids_serde_as_plain_validated_strings() {
        let u = user("alice");
        assert_eq!(serde_json::to_string(&u).unwrap(), "\"alice\"");
        assert_eq!(serde_json::from_str::<UserId>("\"alice\"").unwrap(), u);
        let err = serde_json::from_str::<UserId>("\"a b\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("user id"), "{err}");
        assert!(serde_json::from_str::<GroupId>("\"\"").is_err());
        assert!(serde_json::from_str::<DeviceId>("5").is_err());
    }

    #[test]
    fn id_borrow_lookup_by_str() {
        let mut m = std::collections::HashMap::new();
        m.insert(user("bob"), 1);
        assert_eq!(m.get("bob"), Some(&1));
    }

    #[test]
    fn conv_parse_display_round_trip() {
        for s in [
            "dm:alice:bob",
            "dm:alice:alice",
            "group:g",
            "group:a.b@c-d",
            "dm:A:a",
        ] {
            let c = ConvId::parse(s).unwrap();
            assert_eq!(c.to_string(), s);
            assert_eq!(c.to_text(), s);
            assert_eq!(c.to_text().capacity(), s.len());
            assert!(c.is_text(s));
            for other in [
                "dm:alice:bo",
                "dm:alice:bobb",
                "dm:alicebob",
                "group:",
                "g",
                "",
            ] {
                assert!(!c.is_text(other), "{c} is not {other}");
            }
            assert_eq!(ConvId::parse(&c.to_string()).unwrap(), c);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<ConvId>(&json).unwrap(), c);
        }
    }

    #[test]
    fn conv_parse_rejects_bad_shapes() {
        assert_eq!(ConvId::parse("dm:bob:alice"), Err(IdError::DmOrder));
        assert_eq!(ConvId::parse("dm:a:A"), Err(IdError::DmOrder));
        assert_eq!(ConvId::parse("dm:alice"), Err(IdError::ConvShape));
        assert_eq!(ConvId::parse("user:alice"), Err(IdError::ConvShape));
        assert_eq!(ConvId::parse(""), Err(IdError::ConvShape));
        assert_eq!(ConvId::parse("DM:a:b"), Err(IdError::ConvShape));
        assert!(matches!(
            ConvId::parse("dm:a:b:c"),
            Err(IdError::BadChar { ch: ':', .. })
        ));
        assert!(matches!(ConvId::parse("dm::b"), Err(IdError::Empty { .. })));
        assert!(matches!(ConvId::parse("dm:a:"), Err(IdError::Empty { .. })));
        assert!(matches!(
            ConvId::parse("group:"),
            Err(IdError::Empty { field: "group id" })
        ));
        assert!(matches!(
            ConvId::parse("group:a b"),
            Err(IdError::BadChar { .. })
        ));
        assert!(serde_json::from_str::<ConvId>("\"dm:b:a\"").is_err());
    }

    #[test]
    fn conv_dm_orders_the_pair() {
        let (alice, bob) = (user("alice"), user("bob"));
        let c = ConvId::dm(&bob, &alice);
        assert_eq!(c, ConvId::dm(&alice, &bob));
        assert_eq!(c.to_string(), "dm:alice:bob");
        assert_eq!(ConvId::dm(&alice, &alice).to_string(), "dm:alice:alice");
        // Byte order, not case-insensitive order: 'Z' (0x5A) < 'a' (0x61).
        assert_eq!(ConvId::dm(&alice, &user("Zed")).to_string(), "dm:Zed:alice");
        assert_eq!(ConvId::dm(&user("ab"), &user("a")).to_string(), "dm:a:ab");
    }

    #[test]
    fn conv_membership_and_peer() {
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let c = ConvId::dm(&alice, &bob);
        assert!(c.is_dm_member(&alice) && c.is_dm_member(&bob));
        assert!(!c.is_dm_member(&carol));
        assert_eq!(c.dm_peer(&alice), Some(&bob));
        assert_eq!(c.dm_peer(&bob), Some(&alice));
        assert_eq!(c.dm_peer(&carol), None);
        assert_eq!(c.as_group(), None);
        let own = ConvId::dm(&alice, &alice);
        assert_eq!(own.dm_peer(&alice), Some(&alice));
        let g = ConvId::group(&GroupId::parse("g").unwrap());
        assert!(!g.is_dm_member(&alice));
        assert_eq!(g.dm_peer(&alice), None);
        assert_eq!(g.as_group().map(GroupId::as_str), Some("g"));
    }

    #[test]
    fn conv_ordering_is_total_and_consistent() {
        let mut v: Vec<ConvId> = ["group:b", "dm:b:c", "group:a", "dm:a:z", "dm:a:b"]
            .iter()
            .map(|s| ConvId::parse(s).unwrap())
            .collect();
        v.sort();
        let s: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(s, ["dm:a:b", "dm:a:z", "dm:b:c", "group:a", "group:b"]);
    }

    #[test]
    fn target_parse_and_conv_for() {
        let (alice, bob) = (user("alice"), user("bob"));
        let t = Target::parse("user:alice").unwrap();
        assert_eq!(t, Target::User(alice.clone()));
        assert_eq!(t.conv_for(&bob).to_string(), "dm:alice:bob");
        assert_eq!(t.conv_for(&alice).to_string(), "dm:alice:alice");
        let t = Target::parse("group:g1").unwrap();
        assert_eq!(t.conv_for(&bob).to_string(), "group:g1");
        let t = Target::parse("dm:alice:bob").unwrap();
        assert_eq!(t, Target::Conv(ConvId::dm(&alice, &bob)));
        // A conv target names the conv even for a non-member; the engine checks membership.
        assert_eq!(t.conv_for(&user("carol")).to_string(), "dm:alice:bob");
        assert_eq!(Target::parse("dm:bob:alice"), Err(IdError::DmOrder));
        assert_eq!(Target::parse("alice"), Err(IdError::TargetShape));
        assert_eq!(Target::parse(""), Err(IdError::TargetShape));
        assert!(matches!(
            Target::parse("user:"),
            Err(IdError::Empty { field: "user id" })
        ));
        assert!(matches!(
            Target::parse("user:a:b"),
            Err(IdError::BadChar { .. })
        ));
        for s in ["user:alice", "group:g1", "dm:alice:bob"] {
            assert_eq!(Target::parse(s).unwrap().to_string(), s);
        }
    }
}
