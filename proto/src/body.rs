//! [`RawJson`]: a JSON value kept as its text.
//!
//! A message body travels from the sender's frame to storage and out to every
//! recipient. Keeping it as the client's JSON text means it is parsed once
//! (to validate it) and never re-encoded; the JSON encoder writes it verbatim.

use std::fmt;
use std::hash::{Hash, Hasher};

use rkyv::rancor::{Fallible, Source};
use rkyv::string::{ArchivedString, StringResolver};
use rkyv::{Place, SerializeUnsized};
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// Exactly one JSON value, kept as its JSON text (without surrounding
/// whitespace) and never re-encoded on the server path.
///
/// Serde: serializes verbatim (through serde_json's `RawValue`); deserializes
/// by capturing the text. Where serde buffers input (an internally tagged or
/// untagged enum), the value is parsed and re-serialized instead, which keeps
/// its meaning but may change its spelling (key order, number format).
///
/// rkyv: archived as its text (an `ArchivedString`); deserializing from an
/// archive parses the text and fails if it is not one JSON value.
#[derive(Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// Validates that `s` is exactly one JSON value and keeps its text.
    /// Surrounding whitespace is dropped.
    pub fn from_text(s: impl Into<String>) -> Result<RawJson, serde_json::Error> {
        RawValue::from_string(s.into()).map(RawJson)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// JSON `null`.
    pub fn null() -> RawJson {
        RawJson(RawValue::NULL.to_owned())
    }

    /// The JSON text of `v`.
    pub fn from_value(v: &serde_json::Value) -> RawJson {
        match serde_json::value::to_raw_value(v) {
            Ok(raw) => RawJson(raw),
            // Encoding a `Value` cannot fail: its map keys are strings and it
            // holds no foreign `Serialize` impls.
            Err(_) => RawJson::null(),
        }
    }

    /// The value as a `serde_json::Value`.
    ///
    /// Valid JSON that `Value` cannot hold (nesting deeper than serde_json's
    /// recursion limit, a number beyond `f64`) gives `Value::Null`.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.as_str()).unwrap_or(serde_json::Value::Null)
    }

    /// Length of the JSON text in bytes (what [`crate::BODY_BYTES_MAX`] bounds).
    pub fn len(&self) -> usize {
        self.as_str().len()
    }

    /// Always false: a JSON value has at least one byte. Present for the
    /// `len`/`is_empty` pair convention.
    pub fn is_empty(&self) -> bool {
        self.as_str().is_empty()
    }

    /// Whether the value is a JSON string.
    pub fn is_string(&self) -> bool {
        // The text is trimmed and valid, so a string is exactly one that
        // starts with a quote.
        self.as_str().starts_with('"')
    }

    /// Wraps serde_json's raw value.
    pub fn from_raw(raw: Box<RawValue>) -> RawJson {
        RawJson(raw)
    }

    /// serde_json's raw value.
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RawJson {}

impl Hash for RawJson {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawJson({})", self.as_str())
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for RawJson {
    fn default() -> Self {
        RawJson::null()
    }
}

impl From<&serde_json::Value> for RawJson {
    fn from(v: &serde_json::Value) -> Self {
        RawJson::from_value(v)
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // serde_json (its `Deserializer` and `Value`) answers a newtype
        // struct with RawValue's name with a one-entry map holding the raw
        // text; anything else calls the other `visit_*` methods.
        d.deserialize_newtype_struct(RAW_VALUE_TOKEN, RawJsonVisitor)
    }
}

/// The newtype name serde_json recognises to hand out raw text. It is the
/// name `Box<RawValue>` itself uses; the tests catch a change.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

struct RawJsonVisitor;

impl RawJsonVisitor {
    fn from_value<E: de::Error>(v: serde_json::Value) -> Result<RawJson, E> {
        Ok(RawJson::from_value(&v))
    }
}

impl<'de> Visitor<'de> for RawJsonVisitor {
    type Value = RawJson;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    // The serde_json path: the map is serde_json's raw-value map, which
    // `Box<RawValue>` reads without re-validating.
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawJson, A::Error> {
        Box::<RawValue>::deserialize(MapAccessDeserializer::new(map)).map(RawJson)
    }

    // Buffered input (serde's internal content): capture a `Value`.
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<RawJson, D::Error> {
        Self::from_value(serde_json::Value::deserialize(d)?)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawJson, E> {
        Self::from_value(v.into())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawJson, E> {
        Self::from_value(v.into())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawJson, E> {
        Self::from_value(v.into())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawJson, E> {
        Self::from_value(v.into())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawJson, E> {
        Self::from_value(v.into())
    }

    fn visit_unit<E: de::Error>(self) -> Result<RawJson, E> {
        Ok(RawJson::null())
    }

    fn visit_none<E: de::Error>(self) -> Result<RawJson, E> {
        Ok(RawJson::null())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawJson, D::Error> {
        Self::from_value(serde_json::Value::deserialize(d)?)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawJson, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<serde_json::Value>()? {
            items.push(v);
        }
        Self::from_value(serde_json::Value::Array(items))
    }
}

impl rkyv::Archive for RawJson {
    type Archived = ArchivedString;
    type Resolver = StringResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedString::resolve_from_str(self.as_str(), resolver, out);
    }
}

impl<S: Fallible + ?Sized> rkyv::Serialize<S> for RawJson
where
    S::Error: Source,
    str: SerializeUnsized<S>,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedString::serialize_from_str(self.as_str(), serializer)
    }
}

/// An archive is untrusted input: its text must parse as one JSON value.
impl<D: Fallible + ?Sized> rkyv::Deserialize<RawJson, D> for ArchivedString
where
    D::Error: Source,
{
    fn deserialize(&self, _: &mut D) -> Result<RawJson, D::Error> {
        RawJson::from_text(self.as_str()).map_err(|e| D::Error::new(BodyNotJson(e)))
    }
}

/// An archived body that is not one JSON value.
#[derive(Debug, thiserror::Error)]
#[error("body is not valid JSON: {0}")]
struct BodyNotJson(serde_json::Error);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_text_validates_and_trims() {
        assert_eq!(
            RawJson::from_text(" {\"a\": 1} ").unwrap().as_str(),
            "{\"a\": 1}"
        );
        assert_eq!(RawJson::from_text("\"hi\"").unwrap().as_str(), "\"hi\"");
        for bad in ["", " ", "{", "1 2", "{\"a\":}", "nul", "'x'", "[1,]"] {
            assert!(RawJson::from_text(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn null_value_and_string() {
        assert_eq!(RawJson::null().as_str(), "null");
        assert_eq!(RawJson::null().to_value(), serde_json::Value::Null);
        let v = serde_json::json!({"url": "x", "size": 3});
        let raw = RawJson::from_value(&v);
        assert_eq!(raw.to_value(), v);
        assert!(RawJson::from_text("\"x\"").unwrap().is_string());
        assert!(!RawJson::from_text("[\"x\"]").unwrap().is_string());
    }

    #[test]
    fn serializes_verbatim() {
        let raw = RawJson::from_text("{ \"b\" : 2 , \"a\":1.50 }").unwrap();
        assert_eq!(
            serde_json::to_string(&raw).unwrap(),
            "{ \"b\" : 2 , \"a\":1.50 }"
        );
        #[derive(Serialize)]
        struct W {
            x: u8,
            body: RawJson,
        }
        let s = serde_json::to_string(&W { x: 1, body: raw }).unwrap();
        assert_eq!(s, "{\"x\":1,\"body\":{ \"b\" : 2 , \"a\":1.50 }}");
    }

    #[test]
    fn deserializes_capturing_the_text() {
        #[derive(Deserialize)]
        struct W {
            body: RawJson,
        }
        let w: W = serde_json::from_str("{\"body\":  { \"b\" : 2 , \"a\":1.50 } }").unwrap();
        assert_eq!(w.body.as_str(), "{ \"b\" : 2 , \"a\":1.50 }");
        let w: W = serde_json::from_slice(b"{\"body\":null}").unwrap();
        assert_eq!(w.body.as_str(), "null");
        let w: W = serde_json::from_reader(&b"{\"body\":\"a\\u0041\"}"[..]).unwrap();
        assert_eq!(w.body.as_str(), "\"a\\u0041\"");
        let w: W = serde_json::from_value(serde_json::json!({"body": {"k": [1, 2]}})).unwrap();
        assert_eq!(w.body.to_value(), serde_json::json!({"k": [1, 2]}));
    }

    #[test]
    fn deserializes_inside_buffered_enums() {
        #[derive(Deserialize, Debug)]
        #[serde(tag = "type")]
        enum Tagged {
            A { body: RawJson },
        }
        #[derive(Deserialize, Debug)]
        #[serde(untagged)]
        enum Untagged {
            B { body: RawJson },
        }
        let cases = [
            (
                "{\"k\": [1, 2.5, \"x\", null, true]}",
                serde_json::json!({"k": [1, 2.5, "x", null, true]}),
            ),
            ("\"s\"", serde_json::json!("s")),
            ("-3", serde_json::json!(-3)),
            ("18446744073709551615", serde_json::json!(u64::MAX)),
            ("null", serde_json::Value::Null),
            ("[]", serde_json::json!([])),
        ];
        for (text, want) in cases {
            let Tagged::A { body } =
                serde_json::from_str(&format!("{{\"type\":\"A\",\"body\":{text}}}")).unwrap();
            assert_eq!(body.to_value(), want, "{text}");
            let Untagged::B { body } =
                serde_json::from_str(&format!("{{\"body\":{text}}}")).unwrap();
            assert_eq!(body.to_value(), want, "{text}");
        }
    }

    #[test]
    fn rkyv_archives_the_text_and_validates_it() {
        let raw = RawJson::from_text("{\"a\":[1,2]}").unwrap();
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&raw).unwrap();
        let back = rkyv::from_bytes::<RawJson, rkyv::rancor::BoxedError>(&bytes).unwrap();
        assert_eq!(back, raw);
        let bad = rkyv::to_bytes::<rkyv::rancor::Error>(&"{not json".to_owned()).unwrap();
        let err = rkyv::from_bytes::<RawJson, rkyv::rancor::BoxedError>(&bad).unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
    }
}
