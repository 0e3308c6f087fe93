//! Number and date formatting for the report. Every formatter of a measured value takes
//! an `Option` and renders a missing one as "—", so a partial run renders without
//! special cases at the call sites.

use std::time::Duration;

use crate::util;

/// What the report shows for a value the run did not produce.
pub const MISSING: &str = "—";

/// `12,345,678` for a count: the digits grouped by three, rounded to a whole number.
pub fn thousands(v: f64) -> String {
    let rounded = v.round();
    let digits = format!("{:.0}", rounded.abs());
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if rounded < 0.0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// [`thousands`], or "—".
pub fn count(v: Option<f64>) -> String {
    v.map_or_else(|| MISSING.into(), thousands)
}

/// `v` with `decimals` digits after the point, or "—".
pub fn fixed(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| MISSING.into(), |v| format!("{v:.decimals$}"))
}

/// Packets per second as Mpps with two decimals (`7100000` → `7.10`), or "—".
pub fn mpps(pps: Option<f64>) -> String {
    fixed(pps.map(|p| p / 1e6), 2)
}

/// Microseconds with one decimal and the unit (`480` → `480.0 µs`), or "—".
pub fn micros(us: Option<f64>) -> String {
    us.map_or_else(|| MISSING.into(), |us| format!("{us:.1} µs"))
}

/// A byte count in binary units: `420 B`, `1.1 KiB`, `24.0 GiB`, or "—".
pub fn bytes(b: Option<f64>) -> String {
    let Some(b) = b else {
        return MISSING.into();
    };
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b.abs() < 1024.0 {
        return format!("{b:.0} B");
    }
    let mut v = b / 1024.0;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A session count as a plot's axis shows it: `1k`, `1M`, otherwise grouped digits
/// (`65,536`), since a power of two has no short decimal name.
pub fn short_count(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        thousands(n as f64)
    }
}

/// A run's length as xtask prints durations elsewhere (`8m32s`), or "—".
pub fn seconds(s: Option<f64>) -> String {
    match s {
        // from_secs_f64 panics on negative, NaN or huge input.
        Some(s) if s.is_finite() && (0.0..1e12).contains(&s) => {
            util::elapsed(Duration::from_secs_f64(s))
        }
        _ => MISSING.into(),
    }
}

/// The UTC calendar date and time of a Unix timestamp: (year, month, day, hour,
/// minute, second). Howard Hinnant's `civil_from_days`, valid for the whole `i64`
/// day range we could be given; it saves xtask a date crate for one line of text.
pub fn civil(unix: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Days since 0000-03-01, in 400-year eras of 146,097 days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (secs / 3_600, secs % 3_600 / 60, secs % 60);
    (year, month, day, h as u32, m as u32, s as u32)
}

/// `2026-11-18 11:06 UTC`, or "date unknown" without a usable timestamp.
pub fn utc(unix: Option<f64>) -> String {
    match unix {
        // Beyond ±2^53 the f64 no longer holds whole seconds; no run starts there.
        Some(t) if t.is_finite() && t.abs() < 9.0e15 => {
            let (y, mo, d, h, mi, _) = civil(t.floor() as i64);
            format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02} UTC")
        }
        _ => "date unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(65_536.0), "65,536");
        assert_eq!(thousands(7.1e6), "7,100,000");
        assert_eq!(thousands(35_500_000.4), "35,500,000");
        assert_eq!(thousands(999.6), "1,000");
        assert_eq!(thousands(-1234.0), "-1,234");
        assert_eq!(count(None), MISSING);
    }

    #[test]
    fn units() {
        assert_eq!(mpps(Some(7.1e6)), "7.10");
        assert_eq!(mpps(Some(3_456_789.0)), "3.46");
        assert_eq!(mpps(None), MISSING);
        assert_eq!(micros(Some(480.0)), "480.0 µs");
        assert_eq!(micros(Some(6.26)), "6.3 µs");
        assert_eq!(fixed(Some(0.5), 2), "0.50");
        assert_eq!(fixed(None, 1), MISSING);
        assert_eq!(bytes(Some(420.0)), "420 B");
        assert_eq!(bytes(Some(1100.0)), "1.1 KiB");
        assert_eq!(bytes(Some(25_769_803_776.0)), "24.0 GiB");
        assert_eq!(bytes(None), MISSING);
        assert_eq!(short_count(1_000), "1k");
        assert_eq!(short_count(65_536), "65,536");
        assert_eq!(short_count(1_000_000), "1M");
        assert_eq!(short_count(10), "10");
        assert_eq!(seconds(Some(512.3)), "8m32s");
        assert_eq!(seconds(Some(4.0)), "4.0s");
        assert_eq!(seconds(Some(-1.0)), MISSING);
        assert_eq!(seconds(Some(f64::NAN)), MISSING);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(-1), (1969, 12, 31, 23, 59, 59));
        // Leap day of a year divisible by 400.
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(951_868_800), (2000, 3, 1, 0, 0, 0));
        // 2100 is not a leap year: Feb 28 is followed by Mar 1.
        assert_eq!(civil(4_107_456_000), (2100, 2, 28, 0, 0, 0));
        assert_eq!(civil(4_107_542_400), (2100, 3, 1, 0, 0, 0));
        assert_eq!(civil(4_102_444_800), (2100, 1, 1, 0, 0, 0));
        assert_eq!(civil(-62_135_596_800), (1, 1, 1, 0, 0, 0));
        // `date -u -d @1795000000`: Wed Nov 18 11:06:40 UTC 2026.
        assert_eq!(civil(1_795_000_000), (2026, 11, 18, 11, 6, 40));
        assert_eq!(utc(Some(1_795_000_000.0)), "2026-11-18 11:06 UTC");
        assert_eq!(utc(Some(1_795_000_000.9)), "2026-11-18 11:06 UTC");
        assert_eq!(utc(None), "date unknown");
        assert_eq!(utc(Some(1e300)), "date unknown");
    }

    #[test]
    fn civil_is_continuous() {
        // Every day from 1900 to 2200 follows the one before it.
        let mut prev = civil(-2_208_988_800);
        assert_eq!(prev, (1900, 1, 1, 0, 0, 0));
        for day in 1..(300 * 366) {
            let next = civil(-2_208_988_800 + day * 86_400);
            let (y, m, d) = (prev.0, prev.1, prev.2);
            let expected = if d < days_in_month(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
            assert_eq!((next.0, next.1, next.2), expected, "day {day}");
            prev = next;
        }
    }

    fn days_in_month(y: i64, m: u32) -> u32 {
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        match m {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }
}
