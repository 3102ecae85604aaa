//! Keys given twice in the config text: serde_json's `Value` keeps only the last.
//!
//! `{"limits": {"max_request_body_bytes": 100}, "limits": {}}` would
//! otherwise pass validation with the limit silently back at its default,
//! which is what refusing unknown keys is meant to prevent.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::read::join;
use super::ConfigProblem;

/// A problem for every key that an object in `text` gives more than once.
/// Text that is not JSON yields none: the parse reports it.
pub(super) fn duplicate_keys(text: &str) -> Vec<ConfigProblem> {
    let mut found = Vec::new();
    let walk = Walk {
        path: String::new(),
        found: &mut found,
    };
    let _ = walk.deserialize(&mut serde_json::Deserializer::from_str(text));
    found
}

/// Visits one value at `path`, recording duplicates in `found`.
struct Walk<'a> {
    path: String,
    found: &'a mut Vec<ConfigProblem>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            let path = format!("{}[{index}]", self.path);
            let element = Walk {
                path,
                found: &mut *self.found,
            };
            if seq.next_element_seed(element)?.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = join(&self.path, &key);
            if seen.contains(&key) {
                self.found
                    .push(ConfigProblem::new(&path, "is given more than once"));
            }
            let value = Walk {
                path,
                found: &mut *self.found,
            };
            map.next_value_seed(value)?;
            seen.push(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::duplicate_keys;

    fn paths(text: &str) -> Vec<String> {
        duplicate_keys(text).into_iter().map(|p| p.path).collect()
    }

    #[test]
    fn names_each_repeated_key_with_its_path() {
        let text = r#"{"listen": "a", "limits": {"x": 1, "x": 2},
            "gateways": [{"url": "u"}, {"url": "u", "url": "v"}], "listen": "b"}"#;
        assert_eq!(paths(text), ["limits.x", "gateways[1].url", "listen"]);
    }

    #[test]
    fn the_same_key_in_different_objects_is_no_duplicate() {
        let text = r#"{"a": {"k": 1}, "b": {"k": 1}, "c": [{"k": 1}, {"k": 2}]}"#;
        assert!(paths(text).is_empty());
        assert!(paths("not json").is_empty());
    }
}
