//! Conversions between protobuf types and plain Rust values (JSON details, timestamps).

use chrono::{DateTime, TimeZone, Utc};
use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};
use serde_json::{Map, Number, Value as Json};

/// A JSON object as a protobuf `Struct`.
pub fn struct_from_json(map: &Map<String, Json>) -> Struct {
    Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), value_from_json(v)))
            .collect(),
    }
}

fn value_from_json(v: &Json) -> Value {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(value_from_json).collect(),
        }),
        Json::Object(o) => Kind::StructValue(struct_from_json(o)),
    };
    Value { kind: Some(kind) }
}

/// A protobuf `Struct` as a JSON object. Whole numbers come back as integers.
pub fn json_from_struct(s: &Struct) -> Map<String, Json> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), json_from_value(v)))
        .collect()
}

fn json_from_value(v: &Value) -> Json {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => number_to_json(*n),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(json_from_value).collect()),
        Some(Kind::StructValue(s)) => Json::Object(json_from_struct(s)),
    }
}

fn number_to_json(n: f64) -> Json {
    // Protobuf carries every number as a double; give integers back as
    // integers so counts and sizes read naturally in the API.
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.fract() == 0.0 && n.abs() < EXACT {
        if n < 0.0 {
            Json::Number(Number::from(n as i64))
        } else {
            Json::Number(Number::from(n as u64))
        }
    } else {
        Number::from_f64(n).map_or(Json::Null, Json::Number)
    }
}

/// A UTC time as a protobuf `Timestamp`.
pub fn timestamp_from(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A protobuf `Timestamp` as UTC time, or `None` if it is out of range.
pub fn time_from(ts: &Timestamp) -> Option<DateTime<Utc>> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    Utc.timestamp_opt(ts.seconds, ts.nanos as u32).single()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_struct() {
        let v = json!({"a": 1, "b": -2, "c": 1.5, "d": "x", "e": [true, null], "f": {"g": 3}});
        let map = v.as_object().unwrap();
        assert_eq!(&json_from_struct(&struct_from_json(map)), map);
    }

    #[test]
    fn timestamps_round_trip_and_reject_bad_nanos() {
        let t = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        assert_eq!(time_from(&timestamp_from(t)), Some(t));
        assert_eq!(
            time_from(&Timestamp {
                seconds: 0,
                nanos: -1
            }),
            None
        );
    }
}
