//! The one duration grammar, for every duration option of the launcher,
//! every `PREFORK_*` variable and [`MaxAge`](crate::MaxAge)'s `FromStr`.
//!
//! A duration is a number with an optional unit: `500ms`, `30s`, `5m`,
//! `1h`, `7d`, `1.5h`; a bare number means seconds (`30`). Limits accept two
//! words besides ([`parse_limit`]): `forever`, and `0`, both meaning "no
//! limit". Durations above [`MAX`] are refused, so that no deadline built
//! from one can overflow a clock or a PostgreSQL timestamp.

use std::fmt;
use std::time::Duration;

/// The longest duration accepted: 100 years.
pub const MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseDurationError {
    text: String,
    reason: &'static str,
}

impl fmt::Display for ParseDurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid duration {:?}: {}", self.text, self.reason)
    }
}

impl std::error::Error for ParseDurationError {}

const UNITS: &str = "use a number with a unit: 500ms, 30s, 5m, 1h, 7d (a bare number is seconds)";

/// Parses a duration: a number with an optional unit (`ms`, `s`, `m`, `h`,
/// `d`; none means seconds).
///
/// # Errors
///
/// [`ParseDurationError`] naming the text and what is wrong with it: no
/// number, an unknown unit, a negative value, or one above [`MAX`].
pub fn parse(text: &str) -> Result<Duration, ParseDurationError> {
    let error = |reason| ParseDurationError {
        text: text.to_owned(),
        reason,
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    if trimmed.starts_with('-') {
        return Err(error("must not be negative"));
    }
    let value: f64 = number.parse().map_err(|_| error(UNITS))?;
    let seconds_per_unit = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(error(UNITS)),
    };
    let secs = value * seconds_per_unit;
    if !secs.is_finite() || secs > MAX.as_secs_f64() {
        return Err(error("must be at most 100 years"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a limit: a duration as for [`parse`], or `forever` or `0` for no
/// limit (`None`).
///
/// # Errors
///
/// As for [`parse`].
pub fn parse_limit(text: &str) -> Result<Option<Duration>, ParseDurationError> {
    if text.trim() == "forever" {
        return Ok(None);
    }
    Ok(Some(parse(text)?).filter(|d| !d.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_with_units_and_bare_seconds() {
        let ok = [
            ("30", Duration::from_secs(30)),
            ("30s", Duration::from_secs(30)),
            ("500ms", Duration::from_millis(500)),
            ("5m", Duration::from_secs(300)),
            ("1.5h", Duration::from_secs(5400)),
            ("2d", Duration::from_secs(2 * 86_400)),
            (" 0 ", Duration::ZERO),
        ];
        for (text, want) in ok {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "s",
            "soon",
            "5 weeks",
            "-1s",
            "1e3",
            "10000000000000s",
            "1..2s",
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid duration"), "{bad}: {err}");
            assert!(!err.contains('\n'), "{bad}: {err}");
        }
    }

    #[test]
    fn limits_take_forever_and_zero() {
        assert_eq!(parse_limit("forever"), Ok(None));
        assert_eq!(parse_limit("0"), Ok(None));
        assert_eq!(parse_limit("0s"), Ok(None));
        assert_eq!(parse_limit("30m"), Ok(Some(Duration::from_secs(1800))));
        assert!(parse_limit("never").is_err());
    }
}
