//! Floats in JSON artifacts that survive NaN and ±∞: JSON has no such numbers (serde_json writes
//! them as `null` and cannot read that back as an `f64`), so these helpers write a non-finite value
//! as the string `"NaN"`, `"inf"` or `"-inf"` and read numbers and those strings back. Finite values
//! are written as numbers and round-trip exactly (serde_json's `float_roundtrip`).
//!
//! Use on a field: `#[serde(with = "crate::store::json_float")]` (an `f64`),
//! `#[serde(with = "crate::store::json_float::vec")]` (a `Vec<f64>`),
//! `#[serde(with = "crate::store::json_float::matrices")]` (named covariance matrices).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr {
    Number(f64),
    Text(String),
}

fn to_repr(v: f64) -> Repr {
    if v.is_finite() {
        Repr::Number(v)
    } else if v.is_nan() {
        Repr::Text("NaN".into())
    } else if v > 0.0 {
        Repr::Text("inf".into())
    } else {
        Repr::Text("-inf".into())
    }
}

fn from_repr<E: serde::de::Error>(r: Repr) -> Result<f64, E> {
    match r {
        Repr::Number(v) => Ok(v),
        Repr::Text(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            other => Err(E::custom(format!(
                "expected a number, \"NaN\", \"inf\" or \"-inf\", found \"{other}\""
            ))),
        },
    }
}

pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    to_repr(*v).serialize(s)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    from_repr(Repr::deserialize(d)?)
}

/// `Vec<f64>` fields.
pub mod vec {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| to_repr(*x)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Vec::<Repr>::deserialize(d)?.into_iter().map(from_repr).collect()
    }
}

/// `Vec<(name, effect names, matrix)>` fields (a mixed model's covariance matrices): each matrix
/// as its shape and its row-major values.
pub mod matrices {
    use super::*;
    use ndarray::Array2;

    type Named = (String, Vec<String>, Array2<f64>);

    pub fn serialize<S: Serializer>(v: &[Named], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(name, effects, m)| {
            let values: Vec<Repr> = m.iter().map(|x| to_repr(*x)).collect();
            (name, effects, m.dim(), values)
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Named>, D::Error> {
        let raw = Vec::<(String, Vec<String>, (usize, usize), Vec<Repr>)>::deserialize(d)?;
        raw.into_iter()
            .map(|(name, effects, shape, values)| {
                let values = values
                    .into_iter()
                    .map(from_repr)
                    .collect::<Result<Vec<f64>, D::Error>>()?;
                let m = Array2::from_shape_vec(shape, values)
                    .map_err(|e| serde::de::Error::custom(format!("matrix `{name}` of shape {shape:?}: {e}")))?;
                Ok((name, effects, m))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    struct T {
        #[serde(with = "super")]
        x: f64,
        #[serde(with = "super::vec")]
        v: Vec<f64>,
        #[serde(with = "super::matrices")]
        m: Vec<(String, Vec<String>, Array2<f64>)>,
    }

    #[test]
    fn non_finite_values_and_exact_finite_values_round_trip() {
        let t = T {
            x: f64::NAN,
            v: vec![0.1 + 0.2, f64::INFINITY, f64::NEG_INFINITY, -1e-300, 1.0 / 3.0],
            m: vec![(
                "subject".into(),
                vec!["(Intercept)".into(), "x".into()],
                Array2::from_shape_vec((2, 2), vec![1.5, f64::NAN, 2.0 / 7.0, 4.0]).unwrap(),
            )],
        };
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("\"NaN\"") && json.contains("\"-inf\""), "{json}");
        let back: T = serde_json::from_str(&json).unwrap();
        assert!(back.x.is_nan());
        assert_eq!(back.v[0].to_bits(), (0.1f64 + 0.2).to_bits());
        assert_eq!(back.v[1], f64::INFINITY);
        assert_eq!(back.v[2], f64::NEG_INFINITY);
        assert_eq!(back.v[3], -1e-300);
        assert_eq!(back.v[4].to_bits(), (1.0f64 / 3.0).to_bits());
        assert_eq!(back.m[0].2.dim(), (2, 2));
        assert!(back.m[0].2[[0, 1]].is_nan());
        assert_eq!(back.m[0].2[[1, 0]].to_bits(), (2.0f64 / 7.0).to_bits());
        let bad = serde_json::from_str::<T>(r#"{"x":"many","v":[],"m":[]}"#).unwrap_err();
        assert!(bad.to_string().contains("found \"many\""), "{bad}");
    }
}
