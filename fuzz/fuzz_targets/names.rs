//! Name sanitising (`domain::names`) on raw name bytes as an SFTP listing
//! delivers them. Properties: an SFTP-side name is one harmless, non-empty
//! segment within the byte budget, also with a suffix or a collision number;
//! a Content Server name has no `:` or control characters, fits 248
//! characters and is trimmed; non-UTF-8 escaping is reversible.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xecm_core::domain::manifest::is_safe_entry_path;
use xecm_core::domain::names::{
    CS_NAME_MAX_CHARS, SFTP_NAME_MAX_BYTES, cs_name_from_bytes, escape_non_utf8, is_bidi_control,
    numbered, sftp_safe_name, sftp_safe_name_from_bytes, sftp_safe_name_with_suffix,
};

fn assert_safe_segment(s: &str, from: &[u8]) {
    assert!(!s.is_empty(), "empty safe name from {from:?}");
    assert!(
        s.len() <= SFTP_NAME_MAX_BYTES,
        "{} bytes: {s:?} from {from:?}",
        s.len()
    );
    assert!(!s.starts_with('.'), "hidden or dot name {s:?}");
    assert!(is_safe_entry_path(s), "unsafe segment {s:?} from {from:?}");
    assert!(
        !s.chars().any(
            |c| matches!(c, '/' | '\\' | '<' | '>' | ':' | '"' | '|' | '?' | '*')
                || c.is_control()
                || is_bidi_control(c)
        ),
        "reserved character in {s:?}"
    );
    assert_eq!(s, s.trim(), "untrimmed {s:?}");
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("ascii hex");
            out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let safe = sftp_safe_name_from_bytes(data);
    assert_safe_segment(&safe, data);
    assert_eq!(sftp_safe_name(&safe), safe, "not idempotent");
    let (name, suffix) = data.split_at(data.len() / 2);
    let with = sftp_safe_name_with_suffix(&escape_non_utf8(name), &escape_non_utf8(suffix));
    assert_safe_segment(&with, data);
    for n in [2, 99, 4_000_000] {
        let alt = sftp_safe_name(&numbered(&safe, n, SFTP_NAME_MAX_BYTES));
        assert_safe_segment(&alt, data);
    }
    if let Ok(cs) = cs_name_from_bytes(data) {
        assert!(!cs.is_empty() && cs == cs.trim(), "{cs:?}");
        assert!(cs.chars().count() <= CS_NAME_MAX_CHARS, "{cs:?}");
        assert!(
            !cs.chars()
                .any(|c| c == ':' || c.is_control() || is_bidi_control(c)),
            "{cs:?}"
        );
    }
    let escaped = escape_non_utf8(data);
    if std::str::from_utf8(data).is_err() {
        assert_eq!(
            unescape(&escaped),
            data,
            "escaping is not reversible: {escaped:?}"
        );
    }
});
