//! Self-describing values inside rayforge values.
//!
//! The object codec is compact and fast because both sides know the type:
//! it writes no field names or type tags. Types that decide what they are
//! while they are read — `serde_json::Value`, `toml::Value`, enums marked
//! `#[serde(untagged)]` or `#[serde(flatten)]`ed fields — cannot be read
//! back that way. Wrap them in [`Json`]: the wrapped value travels as JSON
//! text inside the object, and everything around it keeps the fast codec.

use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that travels as JSON inside a task argument, return value or
/// stored object (see the module docs for when you need it).
///
/// ```no_run
/// use rayforge::Json;
///
/// #[rayforge::remote]
/// fn learning_rate(config: Json<serde_json::Value>) -> f64 {
///     config.0["lr"].as_f64().unwrap_or(0.1)
/// }
///
/// # fn main() -> rayforge::Result<()> {
/// rayforge::init(rayforge::Config::default())?;
/// let config = serde_json::json!({"lr": 0.01, "layers": [64, 64]});
/// assert_eq!(learning_rate::remote(Json(config)).get()?, 0.01);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Json<T>(pub T);

impl<T: Serialize> Serialize for Json<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let text = serde_json::to_string(&self.0).map_err(S::Error::custom)?;
        s.serialize_str(&text)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Json<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map(Json).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_value_with_refs, encode_value, ObjectBytes};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(untagged)]
    enum Param {
        Number(f64),
        Choice(Vec<String>),
    }

    #[test]
    fn self_describing_values_round_trip_inside_the_codec() {
        let v = (
            Json(serde_json::json!({"lr": 0.01, "nested": {"a": [1, 2, null]}})),
            Json(vec![Param::Number(1.5), Param::Choice(vec!["relu".into()])]),
            7u32,
        );
        let bytes = ObjectBytes::from_vec(encode_value((v.0.clone(), 7u32)).unwrap().to_vec());
        let (back, _) = decode_value_with_refs::<(Json<serde_json::Value>, u32)>(&bytes).unwrap();
        assert_eq!(back, (v.0.clone(), 7));
        let bytes = ObjectBytes::from_vec(encode_value(v.1).unwrap().to_vec());
        let (back, _) = decode_value_with_refs::<Json<Vec<Param>>>(&bytes).unwrap();
        assert_eq!(back.0[1], Param::Choice(vec!["relu".into()]));
        // Unwrapped, the codec cannot read it back, and says what to do.
        let bytes = ObjectBytes::from_vec(encode_value(serde_json::json!({"a": 1})).unwrap().to_vec());
        let err = decode_value_with_refs::<serde_json::Value>(&bytes)
            .err()
            .expect("an error");
        assert!(err.to_string().contains("rayforge::Json"), "{err}");
    }
}
