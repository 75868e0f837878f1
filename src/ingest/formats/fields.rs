//! Reading vendor JSON losslessly: a [`Fields`] cursor hands out the keys a parser models,
//! converting leniently (vendors send numbers as strings and empty strings for "none"), and
//! returns every key it did not hand out as `extra`, so nothing of the payload is dropped.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeZone as _, Utc};
use serde_json::{Map, Value};

use crate::domain::call::Extra;
use crate::ingest::formats::{FormatError, ParseContext};

/// Parses payload bytes as JSON.
pub fn parse_json(format: &'static str, bytes: &[u8]) -> Result<Value, FormatError> {
    serde_json::from_slice(bytes).map_err(|error| FormatError {
        format,
        path: "$".to_owned(),
        message: format!("not valid JSON: {error}"),
    })
}

/// A JSON object being read by a parser.
#[derive(Debug)]
pub struct Fields<'context> {
    format: &'static str,
    path: String,
    object: Map<String, Value>,
    context: &'context ParseContext,
}

impl<'context> Fields<'context> {
    /// Wraps `value`, which must be an object; `path` is its JSON path (e.g. `$.data`).
    pub fn new(
        format: &'static str,
        path: impl Into<String>,
        value: Value,
        context: &'context ParseContext,
    ) -> Result<Self, FormatError> {
        let path = path.into();
        match value {
            Value::Object(object) => Ok(Self {
                format,
                path,
                object,
                context,
            }),
            other => Err(FormatError {
                format,
                path,
                message: format!("expected an object, found {}", kind(&other)),
            }),
        }
    }

    pub fn context(&self) -> &'context ParseContext {
        self.context
    }

    pub fn format(&self) -> &'static str {
        self.format
    }

    /// JSON path of a key of this object.
    pub fn path_of(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    /// An error about a key of this object.
    pub fn error(&self, key: &str, message: impl Into<String>) -> FormatError {
        FormatError {
            format: self.format,
            path: self.path_of(key),
            message: message.into(),
        }
    }

    /// Whether the key is present (even if null).
    pub fn has(&self, key: &str) -> bool {
        self.object.contains_key(key)
    }

    /// Takes a key's value; absent and null are both `None`.
    pub fn take(&mut self, key: &str) -> Option<Value> {
        match self.object.remove(key) {
            None | Some(Value::Null) => None,
            Some(value) => Some(value),
        }
    }

    /// Puts a value back, so it ends up in `extra`.
    pub fn keep(&mut self, key: &str, value: Value) {
        self.object.insert(key.to_owned(), value);
    }

    /// A text value: strings as they are, numbers and booleans as text; empty is `None`.
    pub fn string(&mut self, key: &str) -> Result<Option<String>, FormatError> {
        let text = match self.take(key) {
            None => return Ok(None),
            Some(Value::String(text)) => text,
            Some(Value::Number(number)) => number.to_string(),
            Some(Value::Bool(flag)) => flag.to_string(),
            Some(other) => {
                let message = format!("expected text, found {}", kind(&other));
                self.keep(key, other);
                return Err(self.error(key, message));
            }
        };
        Ok((!text.trim().is_empty()).then_some(text))
    }

    /// A text value that must be present and not empty.
    pub fn required_string(&mut self, key: &str) -> Result<String, FormatError> {
        self.string(key)?
            .ok_or_else(|| self.error(key, "is required"))
    }

    /// An integer: a JSON integer, a float without fraction, or digits in a string.
    pub fn i64(&mut self, key: &str) -> Result<Option<i64>, FormatError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(number)) => number
                .as_i64()
                .or_else(|| {
                    number
                        .as_f64()
                        .filter(|float| float.fract() == 0.0 && float.abs() < 9.0e15)
                        .map(|float| float as i64)
                })
                .map(Some)
                .ok_or_else(|| self.error(key, format!("expected an integer, found {number}"))),
            Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
            Some(Value::String(text)) => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| self.error(key, format!("expected an integer, found {text:?}"))),
            Some(other) => {
                Err(self.error(key, format!("expected an integer, found {}", kind(&other))))
            }
        }
    }

    /// An integer that fits 32 bits.
    pub fn i32(&mut self, key: &str) -> Result<Option<i32>, FormatError> {
        match self.i64(key)? {
            None => Ok(None),
            Some(value) => i32::try_from(value)
                .map(Some)
                .map_err(|_| self.error(key, format!("{value} is out of range"))),
        }
    }

    /// A number: JSON number or numeric text.
    pub fn f64(&mut self, key: &str) -> Result<Option<f64>, FormatError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(number)) => Ok(number.as_f64()),
            Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
            Some(Value::String(text)) => text
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|number| number.is_finite())
                .map(Some)
                .ok_or_else(|| self.error(key, format!("expected a number, found {text:?}"))),
            Some(other) => {
                Err(self.error(key, format!("expected a number, found {}", kind(&other))))
            }
        }
    }

    /// A flag: JSON boolean, 0/1, or "0"/"1"/"true"/"false".
    pub fn bool(&mut self, key: &str) -> Result<Option<bool>, FormatError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(flag)),
            Some(Value::Number(number)) => match number.as_i64() {
                Some(0) => Ok(Some(false)),
                Some(1) => Ok(Some(true)),
                _ => Err(self.error(key, format!("expected 0 or 1, found {number}"))),
            },
            Some(Value::String(text)) => match text.trim() {
                "" => Ok(None),
                "0" | "false" => Ok(Some(false)),
                "1" | "true" => Ok(Some(true)),
                _ => Err(self.error(key, format!("expected a flag, found {text:?}"))),
            },
            Some(other) => Err(self.error(key, format!("expected a flag, found {}", kind(&other)))),
        }
    }

    /// A date-time: `YYYY-MM-DD HH:MM:SS` in the context's zone, or RFC 3339 with its own zone.
    pub fn local_time(&mut self, key: &str) -> Result<Option<DateTime<Utc>>, FormatError> {
        let Some(text) = self.string(key)? else {
            return Ok(None);
        };
        parse_local_time(&text, self.context)
            .map(Some)
            .ok_or_else(|| {
                self.error(
                    key,
                    format!("expected a date-time such as 2025-04-14 10:19:21, found {text:?}"),
                )
            })
    }

    /// A time of day (`HH:MM:SS`) on `day`, in the context's zone.
    pub fn time_on(
        &mut self,
        key: &str,
        day: NaiveDate,
    ) -> Result<Option<DateTime<Utc>>, FormatError> {
        let Some(text) = self.string(key)? else {
            return Ok(None);
        };
        NaiveTime::parse_from_str(text.trim(), "%H:%M:%S")
            .ok()
            .and_then(|time| in_zone(day.and_time(time), self.context))
            .map(Some)
            .ok_or_else(|| {
                self.error(
                    key,
                    format!("expected a time such as 10:19:21, found {text:?}"),
                )
            })
    }

    /// Seconds since the Unix epoch.
    pub fn unix_time(&mut self, key: &str) -> Result<Option<DateTime<Utc>>, FormatError> {
        match self.i64(key)? {
            None => Ok(None),
            Some(seconds) => DateTime::from_timestamp(seconds, 0)
                .map(Some)
                .ok_or_else(|| self.error(key, format!("{seconds} is not a valid time"))),
        }
    }

    /// A nested object.
    pub fn object(&mut self, key: &str) -> Result<Option<Fields<'context>>, FormatError> {
        let path = self.path_of(key);
        match self.take(key) {
            None => Ok(None),
            Some(value) => Fields::new(self.format, path, value, self.context).map(Some),
        }
    }

    /// A nested array, as its items with their paths. Absent or null is empty.
    pub fn array(&mut self, key: &str) -> Result<Vec<(String, Value)>, FormatError> {
        let path = self.path_of(key);
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => Ok(items
                .into_iter()
                .enumerate()
                .map(|(index, item)| (format!("{path}[{index}]"), item))
                .collect()),
            Some(other) => {
                let message = format!("expected a list, found {}", kind(&other));
                self.keep(key, other);
                Err(self.error(key, message))
            }
        }
    }

    /// Every key not taken, as it was.
    pub fn rest(self) -> Extra {
        self.object
    }
}

/// Parses `YYYY-MM-DD HH:MM:SS` (zone from the context) or RFC 3339.
pub fn parse_local_time(text: &str, context: &ParseContext) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(with_zone) = DateTime::parse_from_rfc3339(text) {
        return Some(with_zone.with_timezone(&Utc));
    }
    [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
    .and_then(|local| in_zone(local, context))
}

fn in_zone(local: NaiveDateTime, context: &ParseContext) -> Option<DateTime<Utc>> {
    context
        .time_zone
        .from_local_datetime(&local)
        .earliest()
        .map(|time| time.with_timezone(&Utc))
}

/// How a JSON value's type reads in an error message.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ingest::formats::DEFAULT_TIME_ZONE;

    fn context() -> ParseContext {
        ParseContext::new("test", DEFAULT_TIME_ZONE)
    }

    #[test]
    fn hands_out_modelled_keys_and_keeps_the_rest() {
        let context = context();
        let mut fields = Fields::new(
            "test",
            "$",
            json!({"score": "80", "talktimes": 88, "name": "", "data1": "x", "unit_phone": null}),
            &context,
        )
        .expect("an object");
        assert_eq!(fields.i64("score"), Ok(Some(80)));
        assert_eq!(fields.i64("talktimes"), Ok(Some(88)));
        assert_eq!(fields.string("name"), Ok(None));
        let rest = fields.rest();
        assert_eq!(rest.get("data1"), Some(&json!("x")));
        assert_eq!(rest.get("unit_phone"), Some(&Value::Null));
        assert!(!rest.contains_key("score"));
    }

    #[test]
    fn reads_zone_less_times_in_the_context_zone() {
        let context = context();
        let mut fields = Fields::new("test", "$", json!({"at": "2025-04-14 10:19:21"}), &context)
            .expect("an object");
        let at = fields.local_time("at").expect("parses").expect("present");
        assert_eq!(at.to_rfc3339(), "2025-04-14T02:19:21+00:00");
    }

    #[test]
    fn errors_name_the_path() {
        let context = context();
        let mut fields = Fields::new(
            "hangup_push",
            "$.talk_info[3]",
            json!({"score": "abc"}),
            &context,
        )
        .expect("an object");
        let error = fields.i64("score").expect_err("not a number");
        assert_eq!(error.path, "$.talk_info[3].score");
        assert_eq!(
            error.to_string(),
            "hangup_push payload: $.talk_info[3].score: expected an integer, found \"abc\""
        );
    }
}
