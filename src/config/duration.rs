//! Durations in human form ("800ms", "1.5s", "1m", "2h 30m"), read by `humantime`.

use std::{fmt, time::Duration};

use serde::{de, Deserialize, Deserializer};

/// One duration written as text. A bare number is refused: `10` could be seconds or
/// milliseconds, so the file says which.
struct Human(Duration);

impl<'de> Deserialize<'de> for Human {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(HumanVisitor)
    }
}

struct HumanVisitor;

impl de::Visitor<'_> for HumanVisitor {
    type Value = Human;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration with its unit, such as \"800ms\", \"1.5s\" or \"2m\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Human, E> {
        humantime::parse_duration(text.trim())
            .map(Human)
            .map_err(|err| E::custom(format_args!("invalid duration {text:?}: {err}")))
    }
}

/// A required duration.
pub(crate) fn required<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Human::deserialize(d).map(|h| h.0)
}

/// An optional duration (use with `#[serde(default)]`).
pub(crate) fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<Human>::deserialize(d).map(|h| h.map(|h| h.0))
}

/// An optional list of durations (use with `#[serde(default)]`).
pub(crate) fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Duration>>, D::Error> {
    Option::<Vec<Human>>::deserialize(d).map(|l| l.map(|l| l.into_iter().map(|h| h.0).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Duration, String> {
        let json = serde_json::Value::String(text.to_owned());
        required(json).map_err(|e| e.to_string())
    }

    #[test]
    fn human_forms() {
        let ms = Duration::from_millis;
        assert_eq!(parse("800ms"), Ok(ms(800)));
        assert_eq!(parse("1.5s"), Ok(ms(1500)));
        assert_eq!(parse("1m"), Ok(ms(60_000)));
        assert_eq!(parse("2h"), Ok(ms(7_200_000)));
        assert_eq!(parse("1m 30s"), Ok(ms(90_000)));
        assert_eq!(parse(" 250ms "), Ok(ms(250)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_say_why() {
        let err = parse("10").unwrap_err();
        assert!(
            err.contains("invalid duration \"10\"") && err.contains("unit"),
            "{err}"
        );
        let err = parse("3 parsecs").unwrap_err();
        assert!(err.contains("unknown time unit"), "{err}");
        let err = parse("").unwrap_err();
        assert!(err.contains("invalid duration"), "{err}");
        let number = required(serde_json::json!(10)).unwrap_err().to_string();
        assert!(number.contains("a duration with its unit"), "{number}");
    }
}
