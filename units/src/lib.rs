//! Byte sizes, defined once for all of nodecell.
//!
//! Every size a user writes — `max_memory` in a manifest or an
//! `ExtensionConfig`, `--memory`/`--tmp-size` on the command line, the
//! `tmp_size` of a sandbox config — is read by [`parse_size`], and every size
//! nodecell prints goes through [`format_size`]. The rules are those of
//! `docker --memory`'s spelled-out units and of the SI/IEC prefixes:
//!
//! | written | means |
//! |---|---|
//! | `1024`, `1024B` | bytes |
//! | `KB`, `MB`, `GB`, `TB` | powers of 1000 |
//! | `K`, `M`, `G`, `T`, `KiB`, `MiB`, `GiB`, `TiB` (also `Ki`...) | powers of 1024 |
//!
//! Units are case-insensitive, a decimal point is allowed (`1.5G`), blanks
//! around the unit are ignored, and the result must be at least one byte.

use thiserror::Error;

/// What is wrong with a size someone wrote.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SizeError {
    /// Not a number followed by an optional unit.
    #[error("{text:?}: expected a size such as \"8GB\", \"512MiB\", \"2G\" or a number of bytes")]
    Malformed {
        /// The text as written.
        text: String,
    },
    /// A number followed by a unit this table does not know.
    #[error("{text:?}: unknown unit {unit:?}: expected a size such as \"8GB\", \"512MiB\" or \"2G\" (B; KB/MB/GB/TB are powers of 1000; K/M/G/T and KiB/MiB/GiB/TiB powers of 1024)")]
    UnknownUnit {
        /// The text as written.
        text: String,
        /// The unit part of it.
        unit: String,
    },
    /// Less than one byte.
    #[error("{text:?} is zero: expected a size of at least 1 byte")]
    Zero {
        /// The text as written.
        text: String,
    },
    /// More than 2^64 - 1 bytes.
    #[error("{text:?} is too large (more than 2^64 - 1 bytes)")]
    TooLarge {
        /// The text as written.
        text: String,
    },
}

/// One unit and the number of bytes it stands for.
struct Unit {
    names: &'static [&'static str],
    bytes: u64,
}

/// The unit table (names in lower case).
const UNITS: &[Unit] = &[
    Unit {
        names: &["", "b"],
        bytes: 1,
    },
    Unit {
        names: &["kb"],
        bytes: 1_000,
    },
    Unit {
        names: &["mb"],
        bytes: 1_000_000,
    },
    Unit {
        names: &["gb"],
        bytes: 1_000_000_000,
    },
    Unit {
        names: &["tb"],
        bytes: 1_000_000_000_000,
    },
    Unit {
        names: &["k", "ki", "kib"],
        bytes: 1 << 10,
    },
    Unit {
        names: &["m", "mi", "mib"],
        bytes: 1 << 20,
    },
    Unit {
        names: &["g", "gi", "gib"],
        bytes: 1 << 30,
    },
    Unit {
        names: &["t", "ti", "tib"],
        bytes: 1 << 40,
    },
];

/// Parses a size such as `8GB`, `512MiB`, `1.5G` or `4096` into bytes.
///
/// See the module documentation for the units. Whole numbers are computed
/// exactly; a fractional number is rounded down to whole bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let malformed = || SizeError::Malformed {
        text: text.to_string(),
    };
    if number.is_empty()
        || number.matches('.').count() > 1
        || number.starts_with('.')
        || number.ends_with('.')
    {
        return Err(malformed());
    }
    let per_unit = UNITS
        .iter()
        .find(|u| u.names.contains(&unit.as_str()))
        .map(|u| u.bytes)
        .ok_or_else(|| SizeError::UnknownUnit {
            text: text.to_string(),
            unit: unit.clone(),
        })?;
    let too_large = || SizeError::TooLarge {
        text: text.to_string(),
    };
    let bytes = match number.split_once('.') {
        None => {
            let whole: u64 = number.parse().map_err(|_| too_large())?;
            whole.checked_mul(per_unit).ok_or_else(too_large)?
        }
        Some(_) => {
            let value: f64 = number.parse().map_err(|_| malformed())?;
            let bytes = value * per_unit as f64;
            if !bytes.is_finite() || bytes >= u64::MAX as f64 {
                return Err(too_large());
            }
            bytes as u64
        }
    };
    if bytes == 0 {
        return Err(SizeError::Zero {
            text: text.to_string(),
        });
    }
    Ok(bytes)
}

/// Formats a byte count the way nodecell prints sizes: `256 MiB`, `8 GB`
/// (a whole number of the decimal unit), `1.5 GiB`, `244.1 MiB (256000000 bytes)`
/// when rounding hides bytes, `0 bytes`.
pub fn format_size(bytes: u64) -> String {
    for (unit, size) in [
        ("TB", 1_000_000_000_000u64),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
    ] {
        if bytes >= size && bytes.is_multiple_of(size) && !bytes.is_multiple_of(1 << 20) {
            return format!("{} {unit}", bytes / size);
        }
    }
    for (unit, size) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes >= size {
            let value = bytes as f64 / size as f64;
            if bytes.is_multiple_of(size) {
                return format!("{} {unit}", bytes / size);
            }
            let tenths = (value * 10.0).round() / 10.0;
            if (tenths * size as f64) as u64 == bytes {
                return format!("{tenths} {unit}");
            }
            return format!("{value:.1} {unit} ({bytes} bytes)");
        }
    }
    format!("{bytes} bytes")
}

/// A byte count rounded for tables (`nodecell top`, `nodecell venv list`):
/// `512 B`, `12.0 KiB`, `340 MiB` (no decimal from 100 up), `1.2 GiB`.
pub fn approx_size(bytes: u64) -> String {
    for (unit, size) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes >= size {
            let value = bytes as f64 / size as f64;
            return if value >= 100.0 {
                format!("{value:.0} {unit}")
            } else {
                format!("{value:.1} {unit}")
            };
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_of_1000_and_1024() {
        assert_eq!(parse_size("8GB"), Ok(8_000_000_000));
        assert_eq!(parse_size("8gb"), Ok(8_000_000_000));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("512 mi"), Ok(512 << 20));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("3T"), Ok(3 << 40));
        assert_eq!(parse_size("1.5 g"), Ok(3 << 29));
        assert_eq!(parse_size(" 1024 "), Ok(1024));
        assert_eq!(parse_size("1024B"), Ok(1024));
    }

    #[test]
    fn bad_sizes_say_why() {
        for bad in ["", "GB", "-1G", "1..5G", ".5G", "5.G", "1 2G", "0x10"] {
            assert!(
                matches!(
                    parse_size(bad),
                    Err(SizeError::Malformed { .. } | SizeError::UnknownUnit { .. })
                ),
                "{bad}: {:?}",
                parse_size(bad)
            );
        }
        assert!(matches!(
            parse_size("12 parsecs"),
            Err(SizeError::UnknownUnit { unit, .. }) if unit == "parsecs"
        ));
        assert!(matches!(parse_size("0"), Err(SizeError::Zero { .. })));
        assert!(matches!(parse_size("0.1B"), Err(SizeError::Zero { .. })));
        assert!(matches!(
            parse_size("20000000T"),
            Err(SizeError::TooLarge { .. })
        ));
        assert!(matches!(
            parse_size("99999999999999999999999"),
            Err(SizeError::TooLarge { .. })
        ));
        let message = parse_size("12 parsecs").unwrap_err().to_string();
        assert!(
            message.contains("parsecs") && message.contains("KiB"),
            "{message}"
        );
    }

    #[test]
    fn exact_for_whole_numbers_at_the_top() {
        assert_eq!(parse_size("16777215T"), Ok(16_777_215u64 << 40));
    }

    #[test]
    fn formats_as_written() {
        assert_eq!(format_size(0), "0 bytes");
        assert_eq!(format_size(512), "512 bytes");
        assert_eq!(format_size(256 << 20), "256 MiB");
        assert_eq!(format_size(8_000_000_000), "8 GB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(256_000_000), "256 MB");
        assert_eq!(format_size(256_000_001), "244.1 MiB (256000001 bytes)");
        for text in ["8GB", "512MiB", "1.5G", "64K", "3T", "100MB"] {
            let n = parse_size(text).unwrap();
            let shown = format_size(n);
            assert_eq!(
                parse_size(&shown.replace(' ', "")),
                Ok(n),
                "{text} -> {shown}"
            );
        }
    }

    #[test]
    fn approximates_for_tables() {
        assert_eq!(approx_size(512), "512 B");
        assert_eq!(approx_size(3 << 20), "3.0 MiB");
        assert_eq!(approx_size(340 << 20), "340 MiB");
        assert_eq!(approx_size(1288490189), "1.2 GiB");
        assert_eq!(approx_size(5 << 40), "5.0 TiB");
    }
}
