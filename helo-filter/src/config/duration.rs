//! Durations as an operator writes them: `90s`, `15m`, `12h`, `1d`, `1w` (and `500ms`), in
//! flags and in the file alike. A bare number keeps the unit its key or flag is named for
//! (`deny_ttl_secs = 3600`, `--gate-deadline-ms 5000`), so existing files mean what they
//! meant; the control protocol's wire stays in whole seconds (`ttl_secs`).

use std::{fmt, marker::PhantomData};

use serde::{Deserializer, de};

/// The unit a key or flag counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Millis,
    Secs,
}

impl Unit {
    fn millis(self) -> u64 {
        match self {
            Unit::Millis => 1,
            Unit::Secs => 1_000,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Millis => "milliseconds",
            Unit::Secs => "seconds",
        }
    }
}

/// Suffixes and their length in milliseconds (`ms` before `m` and `s`, which it ends with).
const SUFFIXES: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 604_800_000),
];

/// Parses `text` into a count of `unit`: a bare number is already one, a number with a
/// suffix is converted (and must come out whole: `1500ms` is no count of seconds).
pub fn parse(text: &str, unit: Unit) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit_millis) = SUFFIXES
        .iter()
        .find_map(|(suffix, millis)| text.strip_suffix(suffix).map(|d| (d, Some(*millis))))
        .unwrap_or((text, None));
    let bad = || {
        format!(
            "{text:?} is not a duration: a whole number of {} or a number with a unit \
             (500ms, 90s, 15m, 12h, 1d, 1w)",
            unit.name()
        )
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let Some(unit_millis) = unit_millis else {
        return Ok(number);
    };
    let millis = number
        .checked_mul(unit_millis)
        .ok_or_else(|| format!("{text:?} is too long a duration"))?;
    if millis % unit.millis() != 0 {
        return Err(format!("{text:?} is not a whole number of {}", unit.name()));
    }
    Ok(millis / unit.millis())
}

/// A flag's value parser: a duration in `unit`, converted to the flag's integer type.
pub fn flag<T: TryFrom<u64>>(unit: Unit) -> impl Fn(&str) -> Result<T, String> + Clone {
    move |text| {
        let count = parse(text, unit)?;
        T::try_from(count).map_err(|_| format!("{text:?} is too long a duration"))
    }
}

/// serde: a key counted in milliseconds (a bare integer, or a string with a unit).
pub fn millis<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(DurationVisitor(Unit::Millis, PhantomData))
}

/// serde: a key counted in seconds (a bare integer, or a string with a unit).
pub fn secs<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(DurationVisitor(Unit::Secs, PhantomData))
}

struct DurationVisitor<T>(Unit, PhantomData<T>);

impl<T: TryFrom<u64>> DurationVisitor<T> {
    fn convert<E: de::Error>(&self, count: u64) -> Result<T, E> {
        T::try_from(count).map_err(|_| match count {
            0 => E::custom("0: the duration must be nonzero"),
            _ => E::custom(format!("{count} is out of range")),
        })
    }
}

impl<T: TryFrom<u64>> de::Visitor<'_> for DurationVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "a whole number of {} or a duration string such as \"90s\", \"15m\", \"1d\"",
            self.0.name()
        )
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.convert(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        let count = u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))?;
        self.convert(count)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        self.convert(parse(v, self.0).map_err(E::custom)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_suffix_in_seconds() {
        for (text, secs) in [
            ("90", 90),
            ("90s", 90),
            ("15m", 900),
            ("12h", 43_200),
            ("1d", 86_400),
            ("1w", 604_800),
            ("2000ms", 2),
        ] {
            assert_eq!(parse(text, Unit::Secs), Ok(secs), "{text}");
        }
    }

    #[test]
    fn every_suffix_in_milliseconds() {
        for (text, ms) in [("750", 750), ("750ms", 750), ("5s", 5_000), ("1m", 60_000)] {
            assert_eq!(parse(text, Unit::Millis), Ok(ms), "{text}");
        }
    }

    #[test]
    fn what_is_no_duration_is_refused_with_the_forms_that_are() {
        for text in ["", "d", "1.5h", "-1s", "1y", "1 d x", "s1"] {
            let error = parse(text, Unit::Secs).unwrap_err();
            assert!(error.contains("90s, 15m"), "{text}: {error}");
        }
        let error = parse("1500ms", Unit::Secs).unwrap_err();
        assert!(error.contains("not a whole number of seconds"), "{error}");
        let error = parse("99999999999999999w", Unit::Secs).unwrap_err();
        assert!(error.contains("too long"), "{error}");
    }

    #[test]
    fn a_flag_too_long_for_its_type_is_refused() {
        let parser = flag::<u32>(Unit::Millis);
        assert_eq!(parser("5s"), Ok(5_000));
        assert!(parser("8w").unwrap_err().contains("too long"));
    }

    #[derive(serde::Deserialize, Debug)]
    struct Keys {
        #[serde(deserialize_with = "secs")]
        ttl_secs: u64,
        #[serde(deserialize_with = "millis")]
        deadline_ms: u32,
    }

    #[test]
    fn toml_takes_integers_in_the_keys_unit_and_strings_with_units() {
        let keys: Keys = toml::from_str("ttl_secs = \"1d\"\ndeadline_ms = 250").unwrap();
        assert_eq!((keys.ttl_secs, keys.deadline_ms), (86_400, 250));
        let keys: Keys = toml::from_str("ttl_secs = 60\ndeadline_ms = \"2s\"").unwrap();
        assert_eq!((keys.ttl_secs, keys.deadline_ms), (60, 2_000));
        let error = toml::from_str::<Keys>("ttl_secs = \"1y\"\ndeadline_ms = 1")
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a duration"), "{error}");
        let error = toml::from_str::<Keys>("ttl_secs = -5\ndeadline_ms = 1")
            .unwrap_err()
            .to_string();
        assert!(error.contains("negative"), "{error}");
    }
}
