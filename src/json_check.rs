//! Is a gateway's body JSON that the caller's parser can read back?
//!
//! RFC 8259's grammar admits numbers no IEEE double holds (`1e400`) and
//! `\u` escapes of lone surrogates (`"\ud800"`); section 9 lets parsers
//! refuse both, and serde_json and Go's encoding/json do. Embedding such a
//! body verbatim would make the whole envelope unreadable, so it counts
//! as text instead. serde_json's `IgnoredAny` skips values by grammar
//! alone, so the check walks them with a visitor that makes serde_json
//! parse each number and decode each string, and keeps nothing.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Validates without building a value. serde_json's recursion limit keeps
/// deeply nested input from exhausting the stack; such input is not JSON
/// here.
///
/// Takes text the caller already checked is UTF-8: read from a `&str`,
/// serde_json trusts it, where from bytes it would check each string again.
pub fn is_json(body: &str) -> bool {
    serde_json::from_str::<Readable>(body).is_ok()
}

/// A JSON value that was read and dropped.
struct Readable;

impl<'de> Deserialize<'de> for Readable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ReadableVisitor)
    }
}

struct ReadableVisitor;

impl<'de> Visitor<'de> for ReadableVisitor {
    type Value = Readable;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_str<E>(self, _: &str) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_unit<E>(self) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Readable, A::Error> {
        while seq.next_element::<Readable>()?.is_some() {}
        Ok(Readable)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Readable, A::Error> {
        while map.next_entry::<Readable, Readable>()?.is_some() {}
        Ok(Readable)
    }
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn values_a_strict_parser_reads_are_json() {
        for body in [
            "{}",
            "[1, -2.5e3, 18446744073709551615, 123456789012345678901234567890]",
            r#"{"a":{"b":[true,false,null,"\u00e9\ud83d\ude00","é"]}}"#,
            " \"text\" ",
            "1e308",
        ] {
            assert!(is_json(body), "{body}");
        }
    }

    #[test]
    fn grammatical_but_unreadable_values_are_not() {
        for body in [
            "1e400",
            "[-1e999]",
            r#""\ud800""#,
            r#"{"k":"\udc00x"}"#,
            r#"{"\ud800":1}"#,
            "{\"a\":1,}",
            "[1] [2]",
        ] {
            assert!(!is_json(body), "{body}");
        }
    }

    /// serde_json's recursion limit, as the README states it.
    #[test]
    fn nesting_up_to_127_levels_is_json() {
        let nested = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        assert!(is_json(&nested(127)));
        assert!(!is_json(&nested(128)));
    }
}
