//! Frame types: what clients send, what the server pushes, and timeline
//! entries.
//!
//! Ids are plain `String`s here: decoding checks the shape of a frame, the
//! engine validates ids at its edge with the types of [`crate::ids`].
//!
//! JSON shape: every frame is one object tagged by `"type"` (see
//! [`crate::codec`]). Serialization is derived; deserialization is written
//! out in [`crate::codec`] so that errors are clear and bodies stay raw.

use serde::{Deserialize, Serialize};

use crate::body::RawJson;
use crate::kind::{ErrorCode, Kind};

/// A stored, sequenced message (`msg` frame, `"type":"msg"` entry).
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Msg {
    /// Conversation id.
    pub conv: String,
    /// Position in the conversation's timeline, from 1.
    pub seq: u64,
    /// Sender user id, or `"system"` for a business-system send.
    pub from: String,
    /// Sending device, `""` for a business-system send.
    pub device: String,
    /// The sender's client message id.
    pub cmid: String,
    /// What the body holds.
    pub kind: Kind,
    /// The body, as the sender's JSON text.
    pub body: RawJson,
    /// Server time of the send, ms since the Unix epoch.
    pub ts: u64,
}

/// A stored, sequenced group event (`event` frame, `"type":"event"` entry).
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Event {
    /// Conversation id.
    pub conv: String,
    /// Position in the conversation's timeline.
    pub seq: u64,
    /// Event code (1501 group created, ...).
    pub code: u16,
    /// Details, e.g. `{"users":[...]}`.
    pub data: RawJson,
    /// Server time, ms since the Unix epoch.
    pub ts: u64,
}

/// A timeline entry exactly as pushed: JSON `{"type":"msg",...}` or
/// `{"type":"event",...}`.
#[derive(
    Clone, Debug, PartialEq, Eq, Serialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    /// A message.
    Msg(Msg),
    /// A group event.
    Event(Event),
}

impl Entry {
    /// Its seq.
    pub fn seq(&self) -> u64 {
        match self {
            Entry::Msg(m) => m.seq,
            Entry::Event(e) => e.seq,
        }
    }

    /// Its server time.
    pub fn ts(&self) -> u64 {
        match self {
            Entry::Msg(m) => m.ts,
            Entry::Event(e) => e.ts,
        }
    }

    /// Its conversation id.
    pub fn conv(&self) -> &str {
        match self {
            Entry::Msg(m) => &m.conv,
            Entry::Event(e) => &e.conv,
        }
    }

    /// The push frame for this entry.
    pub fn into_frame(self) -> ServerFrame {
        match self {
            Entry::Msg(m) => ServerFrame::Msg(m),
            Entry::Event(e) => ServerFrame::Event(e),
        }
    }
}

/// One line of a `convs_result`.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct ConvSummary {
    /// Conversation id.
    pub conv: String,
    /// Highest seq in the conversation.
    pub max_seq: u64,
    /// Highest seq the user has read.
    pub read_seq: u64,
    /// Entries after `read_seq` that count as unread.
    pub unread: u64,
}

pub use wire::{
    ArchivedClientFrame, ArchivedServerFrame, ClientFrame, ClientFrameResolver, ServerFrame,
    ServerFrameResolver,
};

// rkyv's derive leaves the fields of the resolver enums of struct variants
// undocumented; the allow keeps `missing_docs` on for everything else.
#[allow(missing_docs)]
mod wire {
    use super::*;

    /// A frame from a client.
    #[derive(
        Clone, Debug, PartialEq, Eq, Serialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
    )]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub enum ClientFrame {
        /// First frame of a session.
        Auth {
            /// Token minted by the HTTP API.
            token: String,
            /// Device id.
            device: String,
        },
        /// Send a message.
        Send {
            /// Client message id, the dedup key.
            cmid: String,
            /// `user:<id>`, `group:<id>` or a conversation id.
            to: String,
            /// What the body holds.
            kind: Kind,
            /// The body (a JSON string for `text`), at most
            /// [`BODY_BYTES_MAX`](crate::BODY_BYTES_MAX) bytes of JSON.
            body: RawJson,
        },
        /// Cumulative acknowledgement of pushed entries.
        Ack {
            /// Conversation id.
            conv: String,
            /// Every entry up to this seq reached the device.
            seq: u64,
        },
        /// The user read the conversation up to `seq`.
        Read {
            /// Conversation id.
            conv: String,
            /// Read position.
            seq: u64,
        },
        /// Fetch timeline entries after `after`.
        Sync {
            /// Conversation id.
            conv: String,
            /// Entries with a greater seq are returned; 0 (the default) from the start.
            after: u64,
            /// At most this many, 1..=[`SYNC_LIMIT_MAX`](crate::SYNC_LIMIT_MAX);
            /// `None` means [`SYNC_LIMIT_DEFAULT`](crate::SYNC_LIMIT_DEFAULT).
            #[serde(skip_serializing_if = "Option::is_none")]
            limit: Option<u32>,
        },
        /// List every conversation of the user.
        Convs,
        /// The user is typing.
        Typing {
            /// Same forms as `send.to`.
            to: String,
        },
        /// Application-level keepalive.
        Ping,
    }

    impl ClientFrame {
        /// The wire `type` of this frame.
        pub fn type_name(&self) -> &'static str {
            match self {
                ClientFrame::Auth { .. } => "auth",
                ClientFrame::Send { .. } => "send",
                ClientFrame::Ack { .. } => "ack",
                ClientFrame::Read { .. } => "read",
                ClientFrame::Sync { .. } => "sync",
                ClientFrame::Convs => "convs",
                ClientFrame::Typing { .. } => "typing",
                ClientFrame::Ping => "ping",
            }
        }
    }

    /// A frame from the server.
    #[derive(
        Clone, Debug, PartialEq, Eq, Serialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
    )]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub enum ServerFrame {
        /// The session is authenticated.
        AuthOk {
            /// The user the token belongs to.
            user: String,
            /// The device of this connection.
            device: String,
            /// Keepalive interval the client should keep.
            heartbeat_ms: u64,
            /// How long a pushed entry may stay unacknowledged.
            ack_timeout_ms: u64,
            /// Server time.
            ts: u64,
        },
        /// A send is durable.
        SendAck {
            /// The send's cmid.
            cmid: String,
            /// Conversation it landed in.
            conv: String,
            /// Its seq.
            seq: u64,
            /// Its server time.
            ts: u64,
        },
        /// A send failed; nothing was stored.
        SendErr {
            /// The send's cmid.
            cmid: String,
            /// Why.
            code: ErrorCode,
            /// Human-readable detail.
            message: String,
        },
        /// A pushed message.
        Msg(Msg),
        /// A pushed group event.
        Event(Event),
        /// A user read a conversation.
        Receipt {
            /// Conversation id.
            conv: String,
            /// Reader.
            user: String,
            /// Their read position.
            read_seq: u64,
        },
        /// A user is typing.
        Typing {
            /// Conversation id.
            conv: String,
            /// Who.
            user: String,
        },
        /// A large group has new entries up to `max_seq`.
        Notice {
            /// Conversation id.
            conv: String,
            /// Its highest seq.
            max_seq: u64,
        },
        /// This connection was replaced or kicked; it closes next.
        Kicked {
            /// e.g. `"replaced"`.
            reason: String,
        },
        /// Answer to `ping`.
        Pong {
            /// Server time.
            ts: u64,
        },
        /// Answer to `sync`.
        SyncResult {
            /// Conversation id.
            conv: String,
            /// Entries in seq order, each exactly as pushed.
            messages: Vec<Entry>,
            /// More entries follow the last one.
            has_more: bool,
        },
        /// Answer to `convs`.
        ConvsResult {
            /// Every conversation of the user.
            convs: Vec<ConvSummary>,
        },
        /// A frame was refused.
        Error {
            /// Why.
            code: ErrorCode,
            /// Human-readable detail.
            message: String,
        },
    }

    impl ServerFrame {
        /// The wire `type` of this frame.
        pub fn type_name(&self) -> &'static str {
            match self {
                ServerFrame::AuthOk { .. } => "auth_ok",
                ServerFrame::SendAck { .. } => "send_ack",
                ServerFrame::SendErr { .. } => "send_err",
                ServerFrame::Msg(_) => "msg",
                ServerFrame::Event(_) => "event",
                ServerFrame::Receipt { .. } => "receipt",
                ServerFrame::Typing { .. } => "typing",
                ServerFrame::Notice { .. } => "notice",
                ServerFrame::Kicked { .. } => "kicked",
                ServerFrame::Pong { .. } => "pong",
                ServerFrame::SyncResult { .. } => "sync_result",
                ServerFrame::ConvsResult { .. } => "convs_result",
                ServerFrame::Error { .. } => "error",
            }
        }
    }
}

impl From<Entry> for ServerFrame {
    fn from(e: Entry) -> Self {
        e.into_frame()
    }
}
