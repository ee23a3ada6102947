//! String `format`s a CRD schema may validate (strfmt).

// ───────────────────────────── string formats ─────────────────────────────

pub(super) fn format_ok(format: &str, s: &str) -> bool {
    let all = |f: fn(char) -> bool| s.chars().all(f);
    let hex = |c: char| c.is_ascii_hexdigit();
    match format.replace('-', "").as_str() {
        "datetime" => is_date_time(s),
        "date" => is_date(s),
        "duration" => is_duration(s),
        "uuid" => is_uuid(s, None),
        "uuid3" => is_uuid(s, Some('3')),
        "uuid4" => is_uuid(s, Some('4')),
        "uuid5" => is_uuid(s, Some('5')),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => match s.split_once('/') {
            Some((ip, bits)) => {
                let max = if ip.parse::<std::net::Ipv4Addr>().is_ok() {
                    32
                } else if ip.parse::<std::net::Ipv6Addr>().is_ok() {
                    128
                } else {
                    return false;
                };
                bits.parse::<u32>().is_ok_and(|b| b <= max) && !bits.starts_with('+')
            }
            None => false,
        },
        "mac" => {
            let parts: Vec<&str> = s.split([':', '-']).collect();
            matches!(parts.len(), 6 | 8 | 20)
                && parts.iter().all(|p| p.len() == 2 && p.chars().all(hex))
        }
        "hostname" => {
            !s.is_empty()
                && s.len() <= 255
                && s.trim_end_matches('.').split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                })
        }
        "bsonobjectid" => s.len() == 24 && all(|c| c.is_ascii_hexdigit()),
        "byte" => base64_ok(s),
        "password" => true,
        "email" => s
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@')),
        "uri" => {
            s.split_once(':').is_some_and(|(scheme, _)| {
                !scheme.is_empty()
                    && scheme
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic())
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            }) || s.starts_with('/')
        }
        "hexcolor" => {
            let h = s.strip_prefix('#').unwrap_or(s);
            matches!(h.len(), 3 | 6) && h.chars().all(hex)
        }
        "rgbcolor" => s
            .strip_prefix("rgb(")
            .and_then(|r| r.strip_suffix(')'))
            .is_some_and(|r| {
                let parts: Vec<&str> = r.split(',').map(str::trim).collect();
                parts.len() == 3
                    && parts
                        .iter()
                        .all(|p| p.parse::<u16>().is_ok_and(|n| n <= 255))
            }),
        "ssn" => {
            let d: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
            d.len() == 9 && all(|c| c.is_ascii_digit() || c == '-' || c == ' ')
        }
        "isbn" | "isbn10" | "isbn13" | "creditcard" => {
            let d: Vec<char> = s.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
            match format {
                "isbn10" => d.len() == 10,
                "isbn13" => d.len() == 13,
                "isbn" => d.len() == 10 || d.len() == 13,
                _ => (13..=19).contains(&d.len()) && d.iter().all(char::is_ascii_digit),
            }
        }
        _ => true,
    }
}

pub(super) fn base64_ok(s: &str) -> bool {
    let t = s.trim_end_matches('=');
    let pad = s.len() - t.len();
    s.len().is_multiple_of(4)
        && pad <= 2
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
}

/// strfmt `IsDate`: Go `time.Parse("2006-01-02", s)`.
pub(super) fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        && chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

/// strfmt `IsDateTime`: a date, `t`, then `hh:mm:ss[.frac](z|±hh:mm)` (case-insensitive).
pub(super) fn is_date_time(s: &str) -> bool {
    if s.len() < 4 {
        return false;
    }
    let lower = s.to_lowercase();
    let parts: Vec<&str> = lower.split('t').collect();
    if parts.len() < 2 || !is_date(parts[0]) {
        return false;
    }
    let t: Vec<char> = parts[1].chars().collect();
    let digits = |r: std::ops::Range<usize>| {
        r.clone()
            .all(|i| t.get(i).is_some_and(char::is_ascii_digit))
    };
    if t.len() < 9 || !digits(0..2) || t[2] != ':' || !digits(3..5) || t[5] != ':' || !digits(6..8)
    {
        return false;
    }
    let two = |i: usize| t[i..i + 2].iter().collect::<String>();
    if two(0).as_str() > "23" || two(3).as_str() > "59" || two(6).as_str() > "59" {
        return false;
    }
    let mut i = 8;
    // `(.[0-9]+)?`: any one character followed by digits
    if i + 1 < t.len() && t[i] != 'z' && t[i] != '+' && t[i] != '-' && t[i + 1].is_ascii_digit() {
        i += 1;
        while i < t.len() && t[i].is_ascii_digit() {
            i += 1;
        }
    }
    let zone: String = t[i..].iter().collect();
    zone == "z" || {
        let z = zone.as_bytes();
        z.len() == 6
            && (z[0] == b'+' || z[0] == b'-')
            && z[1].is_ascii_digit()
            && z[2].is_ascii_digit()
            && z[3] == b':'
            && z[4].is_ascii_digit()
            && z[5].is_ascii_digit()
    }
}

/// strfmt UUID patterns: 8-4-4-4-12 hex groups, each dash optional; versions 3/4/5
/// fix the version digit, 4/5 also the variant (`[89ab]`).
pub(super) fn is_uuid(s: &str, version: Option<char>) -> bool {
    let c: Vec<char> = s.to_ascii_lowercase().chars().collect();
    let mut i = 0;
    for (g, len) in [8usize, 4, 4, 4, 12].into_iter().enumerate() {
        if g > 0 && c.get(i) == Some(&'-') {
            i += 1;
        }
        let Some(group) = c.get(i..i + len) else {
            return false;
        };
        if !group.iter().all(char::is_ascii_hexdigit) {
            return false;
        }
        if g == 2 && version.is_some_and(|v| group[0] != v) {
            return false;
        }
        if g == 3
            && matches!(version, Some('4' | '5'))
            && !matches!(group[0], '8' | '9' | 'a' | 'b')
        {
            return false;
        }
        i += len;
    }
    i == c.len()
}

/// strfmt `ParseDuration`: Go `time.ParseDuration`, else any `<digits> <unit>` match
/// with a known unit (`5 days`, `3 hours`).
pub(super) fn is_duration(s: &str) -> bool {
    if go_parse_duration_ok(s) {
        return true;
    }
    const UNITS: &[&[&str]] = &[
        &["ns", "nano"],
        &["us", "µs", "micro"],
        &["ms", "milli"],
        &["s", "sec"],
        &["m", "min"],
        &["h", "hr", "hour"],
        &["d", "day"],
        &["w", "wk", "week"],
    ];
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < c.len() {
        if !c[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        while i < c.len() && c[i].is_ascii_digit() {
            i += 1;
        }
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        let start = i;
        while i < c.len() && (c[i].is_ascii_alphabetic() || c[i] == 'µ') {
            i += 1;
        }
        if i == start {
            continue;
        }
        let unit: String = c[start..i].iter().collect::<String>().to_lowercase();
        let known = UNITS.iter().any(|variants| {
            let last = variants.len() - 1;
            variants
                .iter()
                .enumerate()
                .any(|(k, v)| (k == last && unit.starts_with(v)) || unit == *v)
        });
        if known {
            return true;
        }
    }
    false
}

/// Go `time.ParseDuration` syntax: `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+` or `0`.
pub(super) fn go_parse_duration_ok(s: &str) -> bool {
    let t = s.strip_prefix(['+', '-']).unwrap_or(s);
    if t == "0" {
        return true;
    }
    if t.is_empty() {
        return false;
    }
    let units = ["ns", "us", "µs", "μs", "ms", "s", "m", "h"];
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return false;
        }
        rest = &rest[num_len..];
        let Some(u) = units
            .iter()
            .filter(|u| rest.starts_with(**u))
            .max_by_key(|u| u.len())
        else {
            return false;
        };
        rest = &rest[u.len()..];
    }
    true
}
