//! Name sanitising on both sides of a transfer.
//!
//! Content Server names ([`cs_name`]): no `:` (the server refuses it; pyxecm
//! strips it, we replace it with `_` so word boundaries survive), no control
//! characters, trimmed, at most 248 characters with the extension kept. The
//! original name is recorded in metadata by the caller, so this may be lossy.
//!
//! SFTP-side names ([`sftp_safe_name`]) for the names *we* create (`failed/`,
//! `archive/`, export targets): one path segment, no separators, no NUL or
//! control characters, none of Windows' reserved `<>:"|?*`, no leading dot (that would hide the file and makes
//! `..` impossible), at most [`SFTP_NAME_MAX_BYTES`] bytes so that suffixes
//! such as `.error.json` still fit the usual 255-byte file-name limit.
//!
//! Names read from a partner's server may not be UTF-8. [`escape_non_utf8`]
//! turns such bytes into `%XX` escapes (and `%` into `%25`) so the result is
//! unambiguous, printable and reversible for the error report.

use super::template::split_ext;

/// Content Server's limit on node names, in characters.
pub const CS_NAME_MAX_CHARS: usize = 248;
/// Byte budget for SFTP names we create; leaves room for `.error.json` and a
/// ` (NNN)` collision counter within a 255-byte `NAME_MAX`.
pub const SFTP_NAME_MAX_BYTES: usize = 230;
/// Extensions longer than this are treated as part of the name when truncating
/// (`report.this-is-not-really-an-extension`).
const MAX_KEPT_EXT_CHARS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing usable is left after sanitising (e.g. a name of only `:` and spaces).
    #[error("name {original:?} is empty after sanitising for Content Server")]
    Empty { original: String },
}

impl NameError {
    /// A bad name stays bad: never retryable.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Decode raw name bytes: valid UTF-8 passes unchanged (except `%`, escaped
/// as `%25` only when the input also has invalid bytes, so plain names stay
/// readable); invalid bytes become `%XX`.
pub fn escape_non_utf8(raw: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(raw) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(raw.len() + 8);
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '%' {
                out.push_str("%25");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Truncate `name` so that `measure(result) <= max`, keeping a short
/// extension intact and cutting on character boundaries.
fn truncate_keeping_ext(name: &str, max: usize, measure: fn(&str) -> usize) -> String {
    if measure(name) <= max {
        return name.to_owned();
    }
    let (stem, ext) = split_ext(name);
    let keep_ext = !ext.is_empty() && ext.chars().count() <= MAX_KEPT_EXT_CHARS;
    let (body, suffix) = if keep_ext {
        (stem, format!(".{ext}"))
    } else {
        (name, String::new())
    };
    let budget = max.saturating_sub(measure(&suffix));
    let mut cut = String::new();
    for c in body.chars() {
        let mut next = cut.clone();
        next.push(c);
        if measure(&next) > budget {
            break;
        }
        cut = next;
    }
    // Trimming again: a cut can end on whitespace, which Content Server trims
    // itself and which would make our name differ from the stored one.
    format!("{}{}", cut.trim_end(), suffix)
}

fn char_len(s: &str) -> usize {
    s.chars().count()
}

fn byte_len(s: &str) -> usize {
    s.len()
}

/// A name Content Server accepts, as close to `original` as possible.
pub fn cs_name(original: &str) -> Result<String, NameError> {
    let replaced: String = original
        .chars()
        .filter_map(|c| match c {
            ':' => Some('_'),
            c if c.is_control() || is_bidi_control(c) => None,
            // Unicode line/paragraph separators are not `is_control` but break
            // single-line displays and logs the same way.
            '\u{2028}' | '\u{2029}' => None,
            c => Some(c),
        })
        .collect();
    let trimmed = replaced.trim();
    let out = truncate_keeping_ext(trimmed, CS_NAME_MAX_CHARS, char_len);
    if out.trim().is_empty() {
        return Err(NameError::Empty {
            original: original.to_owned(),
        });
    }
    Ok(out)
}

/// [`cs_name`] for raw bytes from an SFTP listing (invalid UTF-8 escaped first).
pub fn cs_name_from_bytes(original: &[u8]) -> Result<String, NameError> {
    cs_name(&escape_non_utf8(original))
}

/// A single, harmless SFTP path segment derived from `original`; never empty.
pub fn sftp_safe_name(original: &str) -> String {
    let mut s: String = original
        .chars()
        .map(|c| match c {
            '/' | '\\' | '\0' => '_',
            // Reserved on Windows servers; partners run those too.
            '<' | '>' | ':' | '"' | '|' | '?' | '*' => '_',
            c if c.is_control() || is_bidi_control(c) => '_',
            c => c,
        })
        .collect();
    s = s.trim().to_owned();
    // A leading dot would hide the file and `.`/`..` would be navigation.
    if s.starts_with('.') {
        s = format!("_{}", &s[1..]);
    }
    let s = truncate_keeping_ext(&s, SFTP_NAME_MAX_BYTES, byte_len);
    if s.is_empty() {
        "unnamed".to_owned()
    } else {
        s
    }
}

/// `<name>-<suffix>` made safe, shortening the name (never the suffix,
/// which is what tells such names apart) to fit [`SFTP_NAME_MAX_BYTES`].
pub fn sftp_safe_name_with_suffix(name: &str, suffix: &str) -> String {
    let suffix = sftp_safe_name(suffix);
    let room = SFTP_NAME_MAX_BYTES.saturating_sub(suffix.len() + 1);
    let mut head = String::new();
    for c in sftp_safe_name(name).chars() {
        if head.len() + c.len_utf8() > room {
            break;
        }
        head.push(c);
    }
    let head = head.trim_end();
    sftp_safe_name(&format!("{head}-{suffix}"))
}

/// [`sftp_safe_name`] for raw bytes.
pub fn sftp_safe_name_from_bytes(original: &[u8]) -> String {
    sftp_safe_name(&escape_non_utf8(original))
}

/// The `n`-th alternative for a name that is taken: `stem (n).ext`, still
/// within `max_chars` characters (Content Server: 248).
pub fn numbered(name: &str, n: u32, max_chars: usize) -> String {
    let (stem, ext) = split_ext(name);
    let marker = format!(" ({n})");
    let ext_part = if ext.is_empty() {
        String::new()
    } else {
        format!(".{ext}")
    };
    let budget = max_chars.saturating_sub(char_len(&marker) + char_len(&ext_part));
    let stem: String = stem.chars().take(budget).collect();
    format!("{}{marker}{ext_part}", stem.trim_end())
}

/// Unicode bidirectional controls (embeddings, overrides, isolates, marks):
/// invisible, and able to make `invoice\u{202E}fdp.exe` display as
/// `invoiceexe.pdf`.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
    )
}

/// Why a partner's name is refused before anything else is decided about it:
/// bidirectional controls that disguise what the name really ends in.
/// `None` for a name without them.
pub fn hidden_name_problem(name: &str) -> Option<String> {
    let controls: Vec<String> = name
        .chars()
        .filter(|c| is_bidi_control(*c))
        .map(|c| format!("U+{:04X}", c as u32))
        .collect();
    if controls.is_empty() {
        return None;
    }
    let plain: String = name.chars().filter(|c| !is_bidi_control(*c)).collect();
    let last = plain.rsplit('/').next().unwrap_or(&plain);
    let ext = match last.rsplit_once('.') {
        Some((_, e)) if !e.is_empty() => format!("really ends in \".{e}\""),
        _ => "has no real extension".to_owned(),
    };
    let kind = if name.contains('\u{202E}') {
        "a right-to-left override"
    } else {
        "bidirectional control characters"
    };
    Some(format!(
        "the name contains {kind} ({}) that changes how it displays and can hide its real extension: it {ext} (shown without the controls: {:?})",
        controls.join(", "),
        plain
    ))
}

/// The error report written next to a file moved to `failed/`.
pub fn error_report_name(safe_name: &str) -> String {
    format!("{safe_name}.error.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_rtl_override_when_checked_then_problem_names_it_and_the_real_extension() {
        let p = hidden_name_problem("invoice\u{202E}fdp.exe").unwrap();
        assert!(
            p.contains("right-to-left override") && p.contains("U+202E"),
            "{p}"
        );
        assert!(p.contains("\".exe\""), "{p}");
        assert!(!p.contains('\u{202E}'), "{p}");
        assert_eq!(hidden_name_problem("invoice.pdf"), None);
        assert_eq!(sftp_safe_name("a\u{202E}fdp.exe"), "a_fdp.exe");
        assert_eq!(cs_name("a\u{2066}b.pdf").unwrap(), "ab.pdf");
    }

    #[test]
    fn given_colon_and_control_chars_when_sanitised_for_cs_then_removed_and_trimmed() {
        assert_eq!(
            cs_name("  Invoice: 4711\t\r\n.pdf ").unwrap(),
            "Invoice_ 4711.pdf"
        );
        assert_eq!(cs_name("a\u{0}b\u{7f}c\u{2028}.txt").unwrap(), "abc.txt");
    }

    #[test]
    fn given_300_char_name_when_sanitised_for_cs_then_248_chars_with_extension_kept() {
        let long = format!("{}.pdf", "ä".repeat(300));
        let out = cs_name(&long).unwrap();
        assert_eq!(out.chars().count(), CS_NAME_MAX_CHARS);
        assert!(out.ends_with(".pdf"));
        // An over-long "extension" is not worth keeping whole.
        let weird = format!("x.{}", "e".repeat(300));
        assert_eq!(cs_name(&weird).unwrap().chars().count(), CS_NAME_MAX_CHARS);
    }

    #[test]
    fn given_name_of_only_colons_and_spaces_when_sanitised_then_still_non_empty_or_error() {
        assert_eq!(cs_name(" : ").unwrap(), "_");
        assert!(matches!(cs_name(" \t\n "), Err(NameError::Empty { .. })));
        assert!(cs_name("").is_err());
    }

    #[test]
    fn given_non_utf8_bytes_when_escaped_then_reversible_and_printable() {
        assert_eq!(escape_non_utf8(b"plain%.pdf"), "plain%.pdf");
        assert_eq!(escape_non_utf8(b"a\xff%b.pdf"), "a%FF%25b.pdf");
        assert_eq!(
            cs_name_from_bytes(b"r\xe9sum\xe9.pdf").unwrap(),
            "r%E9sum%E9.pdf"
        );
    }

    #[test]
    fn given_hostile_names_when_made_sftp_safe_then_single_visible_segment() {
        for (raw, want) in [
            ("../x", "_._x"),
            ("..", "_."),
            (".hidden", "_hidden"),
            ("a/b\\c", "a_b_c"),
            ("a:b?*.pdf", "a_b__.pdf"),
            ("a\0b\nc", "a_b_c"),
            ("", "unnamed"),
            ("   ", "unnamed"),
        ] {
            assert_eq!(sftp_safe_name(raw), want, "{raw:?}");
        }
        let long = format!("{}.pdf", "é".repeat(300));
        let out = sftp_safe_name(&long);
        assert!(out.len() <= SFTP_NAME_MAX_BYTES && out.ends_with(".pdf"));
        assert!(error_report_name(&out).len() <= 255);
        assert_eq!(sftp_safe_name_from_bytes(b"../\xff"), "_._%FF");
    }

    #[test]
    fn given_taken_name_when_numbered_then_counter_before_extension_within_limit() {
        assert_eq!(numbered("a.pdf", 2, 248), "a (2).pdf");
        assert_eq!(numbered("README", 3, 248), "README (3)");
        let long = format!("{}.pdf", "x".repeat(248 - 4));
        let out = numbered(&long, 12, 248);
        assert_eq!(out.chars().count(), 248);
        assert!(out.ends_with(" (12).pdf"));
    }

    #[test]
    fn a_long_name_is_shortened_before_its_suffix() {
        let long = "Ü".repeat(200);
        let n = sftp_safe_name_with_suffix(&long, "evt-manual-100000");
        assert!(n.len() <= SFTP_NAME_MAX_BYTES, "{}", n.len());
        assert!(n.ends_with("-evt-manual-100000"), "{n}");
        assert!(n.starts_with("ÜÜ"));
        assert_eq!(sftp_safe_name_with_suffix("Q3 Kit", "e/1"), "Q3 Kit-e_1");
    }
}
