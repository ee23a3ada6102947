//! Go rendering and string formats.

use super::*;

// ── Go rendering ──

#[test]
fn go_rendering_matches_fmt() {
    let cases: &[(f64, &str)] = &[
        (0.0, "0"),
        (1.0, "1"),
        (1.5, "1.5"),
        (-0.25, "-0.25"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (123456789.125, "123456789.125"),
    ];
    for (f, want) in cases {
        assert_eq!(go_float(*f), *want, "go_float({f})");
    }
    assert_eq!(go_quote("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\x01\"");
    assert_eq!(
        go_sharp_v(&json!({"b": "x", "a": 1, "c": [true, null, 1.5]})),
        "map[string]interface {}{\"a\":1, \"b\":\"x\", \"c\":[]interface {}{true, interface {}(nil), 1.5}}"
    );
    assert_eq!(
        error_body(R_INVALID, &Bad::Json(json!(-1)), "d"),
        "Invalid value: -1: d"
    );
    assert_eq!(
        error_body(R_INVALID, &Bad::Json(json!("s")), "d"),
        "Invalid value: \"s\": d"
    );
    assert_eq!(
        error_body(R_INVALID, &Bad::Json(Value::Null), "d"),
        "Invalid value: null: d"
    );
    assert_eq!(error_body(R_REQUIRED, &Bad::Omit, ""), "Required value");
    assert_eq!(
        error_body(R_FORBIDDEN, &Bad::Json(json!("x")), "no"),
        "Forbidden: no"
    );
}

#[test]
fn string_formats_table() {
    let cases: &[(&str, &str, bool)] = &[
        ("date-time", "2024-01-02T03:04:05Z", true),
        ("date-time", "2024-01-02t03:04:05.123+02:00", true),
        ("date-time", "2024-01-02T03:04:05", false),
        ("date-time", "2024-13-02T03:04:05Z", false),
        ("date-time", "2024-01-02T24:00:00Z", false),
        ("date", "2024-02-29", true),
        ("date", "2023-02-29", false),
        ("date", "2024-2-9", false),
        ("duration", "1h30m", true),
        ("duration", "-1.5s", true),
        ("duration", "3 days", true),
        ("duration", "soon", false),
        ("uuid", "0f8fad5b-d9cb-469f-a165-70867728950e", true),
        ("uuid", "0F8FAD5BD9CB469FA16570867728950E", true),
        ("uuid", "0f8fad5b-d9cb-469f-a165-70867728950", false),
        ("uuid4", "0f8fad5b-d9cb-469f-a165-70867728950e", true),
        ("uuid3", "0f8fad5b-d9cb-469f-a165-70867728950e", false),
        ("ipv4", "10.0.0.1", true),
        ("ipv4", "10.0.0.256", false),
        ("ipv6", "::1", true),
        ("cidr", "10.0.0.0/8", true),
        ("cidr", "10.0.0.0/33", false),
        ("mac", "01:23:45:67:89:ab", true),
        ("hostname", "redis.workpool-system", true),
        ("hostname", "-bad", false),
        ("byte", "aGVsbG8=", true),
        ("byte", "not base64!", false),
        ("email", "a@b.c", true),
        ("uri", "redis://x:6379/0", true),
        ("bsonobjectid", "507f1f77bcf86cd799439011", true),
        ("password", "anything", true),
    ];
    for (format, value, ok) in cases {
        assert_eq!(format_ok(format, value), *ok, "{format} {value}");
    }
}
