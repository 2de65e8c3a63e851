//! Name and path templates (`Invoices/{yyyy}/{mm}`, `{invoice_no}-{stem}.{ext}`).
//!
//! A template is parsed and checked once when its route is loaded, against a
//! [`Scope`] that says which placeholders make sense where it is used, so an
//! unknown placeholder fails the route load instead of a file at 3 a.m.
//! Rendering is pure: everything comes from a [`TemplateContext`], the clock
//! included.
//!
//! Syntax: `{placeholder}`; `{{` and `}}` are literal braces. Placeholders:
//! - file: `{name}` (original file name), `{stem}`, `{ext}` (no dot, may be empty);
//! - date (from the context's date, UTC): `{yyyy}`, `{mm}`, `{dd}`, `{hh}`, `{yyyy-mm-dd}`;
//! - node (export side): `{version}`, `{node_id}`;
//! - `{route}`: the route name;
//! - `{meta.FIELD}`: sidecar / CSV index metadata;
//! - `{cat.KEY}`: a category attribute value by key (`9001_2`), export side;
//! - `{transfer.FIELD}`: transfer facts (`route`, `host`, `source_path`, `size`,
//!   `sha256`, `received_at`, `ingested_at`, `invocation_id`), attribute values only;
//! - any other identifier `{invoice_no}`: a named regex capture of the rule, which
//!   must exist in the rule's regex.
//!
//! Path templates are split on literal `/` before rendering, so a value can never
//! introduce a directory level: a rendered segment that is empty, `.`, `..` or
//! contains `/`, `\` or NUL is an error, not something to clean up silently.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Datelike, Timelike, Utc};

use super::transfer::TransferFacts;

/// Why a template could not be parsed, checked or rendered. None of these
/// go away on retry: they are configuration or data problems.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template {template:?}: {reason} at byte {position}")]
    Syntax {
        template: String,
        position: usize,
        reason: &'static str,
    },
    #[error("template {template:?}: unknown placeholder {{{placeholder}}}{hint}")]
    UnknownPlaceholder {
        template: String,
        placeholder: String,
        hint: String,
    },
    #[error("template {template:?}: no value for {{{placeholder}}}")]
    Missing {
        template: String,
        placeholder: String,
    },
    #[error("template {template:?}: rendered path segment {segment:?} is unsafe: {reason}")]
    UnsafeSegment {
        template: String,
        segment: String,
        reason: &'static str,
    },
    #[error("template {template:?}: rendered value for {{{placeholder}}} contains NUL")]
    NulInValue {
        template: String,
        placeholder: String,
    },
}

impl TemplateError {
    /// Template problems are configuration or data problems; retrying cannot help.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Transfer fact names usable as `{transfer.FIELD}`.
pub const TRANSFER_FIELDS: &[&str] = &[
    "route",
    "host",
    "source_path",
    "size",
    "sha256",
    "received_at",
    "ingested_at",
    "invocation_id",
    "idempotency_key",
];

/// Which placeholders a template may use where it is used.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// `{name}`, `{stem}`, `{ext}`.
    pub file: bool,
    /// `{yyyy}`, `{mm}`, `{dd}`, `{hh}`, `{yyyy-mm-dd}`.
    pub dates: bool,
    /// `{version}`, `{node_id}`.
    pub node: bool,
    /// `{route}`.
    pub route: bool,
    /// `{meta.FIELD}`.
    pub meta: bool,
    /// `{cat.KEY}`.
    pub category: bool,
    /// `{transfer.FIELD}`.
    pub transfer: bool,
    /// Named captures the template may refer to as `{capture}`.
    pub captures: BTreeSet<String>,
}

impl Scope {
    /// Ingest folder paths and document names: file, date, route, meta and captures.
    pub fn ingest_name(captures: BTreeSet<String>) -> Self {
        Scope {
            file: true,
            dates: true,
            route: true,
            meta: true,
            captures,
            ..Scope::default()
        }
    }

    /// Ingest attribute values: like names plus transfer facts.
    pub fn ingest_value(captures: BTreeSet<String>) -> Self {
        Scope {
            transfer: true,
            ..Scope::ingest_name(captures)
        }
    }

    /// Export file names and directories: file, date, node, route and category values.
    pub fn export_name() -> Self {
        Scope {
            file: true,
            dates: true,
            node: true,
            route: true,
            category: true,
            ..Scope::default()
        }
    }

    /// SFTP-side work paths (archive dir): dates and route only.
    pub fn dates_only() -> Self {
        Scope {
            dates: true,
            route: true,
            ..Scope::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Placeholder {
    Name,
    Stem,
    Ext,
    Year,
    Month,
    Day,
    Hour,
    Date,
    Version,
    NodeId,
    Route,
    Meta(String),
    Category(String),
    Transfer(String),
    Capture(String),
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placeholder::Name => f.write_str("name"),
            Placeholder::Stem => f.write_str("stem"),
            Placeholder::Ext => f.write_str("ext"),
            Placeholder::Year => f.write_str("yyyy"),
            Placeholder::Month => f.write_str("mm"),
            Placeholder::Day => f.write_str("dd"),
            Placeholder::Hour => f.write_str("hh"),
            Placeholder::Date => f.write_str("yyyy-mm-dd"),
            Placeholder::Version => f.write_str("version"),
            Placeholder::NodeId => f.write_str("node_id"),
            Placeholder::Route => f.write_str("route"),
            Placeholder::Meta(k) => write!(f, "meta.{k}"),
            Placeholder::Category(k) => write!(f, "cat.{k}"),
            Placeholder::Transfer(k) => write!(f, "transfer.{k}"),
            Placeholder::Capture(k) => f.write_str(k),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Slot(Placeholder),
}

/// A parsed, scope-checked template. Keeps its source for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

/// Everything a template may draw on. Built by the flow per file or node.
#[derive(Debug, Clone, Default)]
pub struct TemplateContext {
    /// Original file name (last path segment), for `{name}`, `{stem}`, `{ext}`.
    pub name: Option<String>,
    /// The date that date placeholders render (ingest: received time; export: approval time).
    pub date: Option<DateTime<Utc>>,
    pub version: Option<u32>,
    pub node_id: Option<i64>,
    pub route: Option<String>,
    pub captures: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
    pub categories: BTreeMap<String, String>,
    pub transfer: Option<TransferFacts>,
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_key(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Template {
    /// Parse `source` and check every placeholder against `scope`.
    pub fn parse(source: &str, scope: &Scope) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut iter = source.char_indices().peekable();
        while let Some((pos, c)) = iter.next() {
            match c {
                '{' if matches!(iter.peek(), Some((_, '{'))) => {
                    iter.next();
                    literal.push('{');
                }
                '}' if matches!(iter.peek(), Some((_, '}'))) => {
                    iter.next();
                    literal.push('}');
                }
                '}' => {
                    return Err(TemplateError::Syntax {
                        template: source.to_owned(),
                        position: pos,
                        reason: "unmatched '}' (write '}}' for a literal brace)",
                    });
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for (_, c) in iter.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(TemplateError::Syntax {
                            template: source.to_owned(),
                            position: pos,
                            reason: "unclosed '{'",
                        });
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Slot(Self::placeholder(source, &name, scope)?));
                }
                '\0' => {
                    return Err(TemplateError::Syntax {
                        template: source.to_owned(),
                        position: pos,
                        reason: "NUL character",
                    });
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Template {
            source: source.to_owned(),
            pieces,
        })
    }

    fn placeholder(source: &str, name: &str, scope: &Scope) -> Result<Placeholder, TemplateError> {
        let unknown = |hint: &str| TemplateError::UnknownPlaceholder {
            template: source.to_owned(),
            placeholder: name.to_owned(),
            hint: hint.to_owned(),
        };
        let p = match name {
            "name" | "stem" | "ext" if !scope.file => {
                return Err(unknown(" (file placeholders are not available here)"));
            }
            "name" => Placeholder::Name,
            "stem" => Placeholder::Stem,
            "ext" => Placeholder::Ext,
            "yyyy" | "mm" | "dd" | "hh" | "yyyy-mm-dd" if !scope.dates => {
                return Err(unknown(" (date placeholders are not available here)"));
            }
            "yyyy" => Placeholder::Year,
            "mm" => Placeholder::Month,
            "dd" => Placeholder::Day,
            "hh" => Placeholder::Hour,
            "yyyy-mm-dd" => Placeholder::Date,
            "version" | "node_id" if !scope.node => {
                return Err(unknown(" (node placeholders exist only on export)"));
            }
            "version" => Placeholder::Version,
            "node_id" => Placeholder::NodeId,
            "route" if scope.route => Placeholder::Route,
            _ => {
                if let Some(k) = name.strip_prefix("meta.") {
                    if !scope.meta {
                        return Err(unknown(" (no sidecar metadata here)"));
                    }
                    if !is_key(k) {
                        return Err(unknown(" (meta field must be [A-Za-z0-9_-]+)"));
                    }
                    Placeholder::Meta(k.to_owned())
                } else if let Some(k) = name.strip_prefix("cat.") {
                    if !scope.category {
                        return Err(unknown(" (category values exist only on export)"));
                    }
                    if !is_key(k) {
                        return Err(unknown(" (category key must look like 9001_2)"));
                    }
                    Placeholder::Category(k.to_owned())
                } else if let Some(k) = name.strip_prefix("transfer.") {
                    if !scope.transfer {
                        return Err(unknown(" (transfer facts are for attribute values only)"));
                    }
                    if !TRANSFER_FIELDS.contains(&k) {
                        return Err(unknown(" (not a transfer fact)"));
                    }
                    Placeholder::Transfer(k.to_owned())
                } else if is_ident(name) && scope.captures.contains(name) {
                    Placeholder::Capture(name.to_owned())
                } else if is_ident(name) {
                    let known: Vec<&str> = scope.captures.iter().map(String::as_str).collect();
                    return Err(unknown(&format!(
                        " (not a built-in and not a named capture of the rule; captures: {known:?})"
                    )));
                } else {
                    return Err(unknown(""));
                }
            }
        };
        Ok(p)
    }

    /// The template text as configured.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Named captures this template uses (to check a rule's regex provides them).
    pub fn captures_used(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Slot(Placeholder::Capture(c)) => Some(c.as_str()),
            _ => None,
        })
    }

    fn value(&self, p: &Placeholder, ctx: &TemplateContext) -> Result<String, TemplateError> {
        let missing = || TemplateError::Missing {
            template: self.source.clone(),
            placeholder: p.to_string(),
        };
        let date = || ctx.date.ok_or_else(missing);
        let name = || ctx.name.as_deref().ok_or_else(missing);
        let v = match p {
            Placeholder::Name => name()?.to_owned(),
            Placeholder::Stem => split_ext(name()?).0.to_owned(),
            Placeholder::Ext => split_ext(name()?).1.to_owned(),
            Placeholder::Year => format!("{:04}", date()?.year()),
            Placeholder::Month => format!("{:02}", date()?.month()),
            Placeholder::Day => format!("{:02}", date()?.day()),
            Placeholder::Hour => format!("{:02}", date()?.hour()),
            Placeholder::Date => date()?.format("%Y-%m-%d").to_string(),
            Placeholder::Version => ctx.version.ok_or_else(missing)?.to_string(),
            Placeholder::NodeId => ctx.node_id.ok_or_else(missing)?.to_string(),
            Placeholder::Route => ctx.route.clone().ok_or_else(missing)?,
            Placeholder::Meta(k) => ctx.meta.get(k).cloned().ok_or_else(missing)?,
            Placeholder::Category(k) => ctx.categories.get(k).cloned().ok_or_else(missing)?,
            Placeholder::Capture(k) => ctx.captures.get(k).cloned().ok_or_else(missing)?,
            Placeholder::Transfer(k) => ctx
                .transfer
                .as_ref()
                .and_then(|t| t.field(k))
                .ok_or_else(missing)?,
        };
        if v.contains('\0') {
            return Err(TemplateError::NulInValue {
                template: self.source.clone(),
                placeholder: p.to_string(),
            });
        }
        Ok(v)
    }

    /// Render as a free-form value (an attribute value, a description).
    pub fn render_value(&self, ctx: &TemplateContext) -> Result<String, TemplateError> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(l) => out.push_str(l),
                Piece::Slot(p) => out.push_str(&self.value(p, ctx)?),
            }
        }
        Ok(out)
    }

    /// Render as a single SFTP path segment or URL segment: `\\` counts as a
    /// separator too (Windows servers treat it as one).
    pub fn render_segment(&self, ctx: &TemplateContext) -> Result<String, TemplateError> {
        let s = self.render_value(ctx)?;
        check_segment(&self.source, &s, true)?;
        Ok(s)
    }

    /// Render as a Content Server node name: like [`Self::render_segment`], but
    /// `\\` is an ordinary character there (nodes are addressed by id).
    pub fn render_name(&self, ctx: &TemplateContext) -> Result<String, TemplateError> {
        let s = self.render_value(ctx)?;
        check_segment(&self.source, &s, false)?;
        Ok(s)
    }

    /// Render as a relative SFTP path: split on the template's literal `/`
    /// first, then render and check each segment. An empty template is the
    /// empty path.
    pub fn render_path(&self, ctx: &TemplateContext) -> Result<Vec<String>, TemplateError> {
        self.render_path_with(ctx, true)
    }

    /// Render a folder path of Content Server names (`\\` allowed in names).
    pub fn render_name_path(&self, ctx: &TemplateContext) -> Result<Vec<String>, TemplateError> {
        self.render_path_with(ctx, false)
    }

    fn render_path_with(
        &self,
        ctx: &TemplateContext,
        backslash_separates: bool,
    ) -> Result<Vec<String>, TemplateError> {
        let mut segments = Vec::new();
        let mut current = String::new();
        let mut any = false;
        for piece in &self.pieces {
            match piece {
                Piece::Literal(l) => {
                    let mut parts = l.split('/');
                    if let Some(first) = parts.next() {
                        current.push_str(first);
                        any |= !first.is_empty();
                    }
                    for part in parts {
                        segments.push(std::mem::take(&mut current));
                        current.push_str(part);
                        any = true;
                    }
                }
                Piece::Slot(p) => {
                    current.push_str(&self.value(p, ctx)?);
                    any = true;
                }
            }
        }
        segments.push(current);
        if !any {
            return Ok(Vec::new());
        }
        // A leading or trailing slash in the template is tolerated; an empty
        // segment in the middle (`a//b`) or one rendered empty is not.
        let lead = matches!(self.pieces.first(), Some(Piece::Literal(l)) if l.starts_with('/'));
        let trail = matches!(self.pieces.last(), Some(Piece::Literal(l)) if l.ends_with('/'));
        if lead && segments.len() > 1 {
            segments.remove(0);
        }
        if trail && segments.len() > 1 {
            segments.pop();
        }
        for s in &segments {
            check_segment(&self.source, s, backslash_separates)?;
        }
        Ok(segments)
    }
}

fn check_segment(template: &str, s: &str, backslash_separates: bool) -> Result<(), TemplateError> {
    let reason = if s.is_empty() {
        Some("empty")
    } else if s == "." || s == ".." {
        Some("dot segment")
    } else if s.contains('/') || (backslash_separates && s.contains('\\')) {
        Some("contains a path separator")
    } else if s.contains('\0') {
        Some("contains NUL")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TemplateError::UnsafeSegment {
            template: template.to_owned(),
            segment: s.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Split a file name into stem and extension (without the dot). A leading dot
/// (`.bashrc`) is part of the stem, not an extension.
pub fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(0) | None => (name, ""),
        Some(i) => (&name[..i], &name[i + 1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn caps(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn ctx() -> TemplateContext {
        TemplateContext {
            name: Some("INV-4711_ACME.pdf".into()),
            date: Utc.with_ymd_and_hms(2026, 3, 7, 9, 5, 0).single(),
            route: Some("acme-invoices".into()),
            captures: [("invoice_no".to_string(), "4711".to_string())].into(),
            meta: [("vendor".to_string(), "ACME".to_string())].into(),
            ..TemplateContext::default()
        }
    }

    #[test]
    fn given_date_path_template_when_rendered_then_segments_use_zero_padded_parts() {
        let t = Template::parse("Invoices/{yyyy}/{mm}", &Scope::ingest_name(caps(&[]))).unwrap();
        assert_eq!(
            t.render_path(&ctx()).unwrap(),
            vec!["Invoices", "2026", "03"]
        );
        let t = Template::parse("{yyyy-mm-dd}/{dd}-{hh}", &Scope::dates_only()).unwrap();
        assert_eq!(t.render_path(&ctx()).unwrap(), vec!["2026-03-07", "07-09"]);
    }

    #[test]
    fn given_capture_meta_and_file_parts_when_rendered_then_all_are_substituted() {
        let t = Template::parse(
            "{meta.vendor} {invoice_no} ({stem}).{ext} {{x}}",
            &Scope::ingest_name(caps(&["invoice_no"])),
        )
        .unwrap();
        assert_eq!(
            t.render_segment(&ctx()).unwrap(),
            "ACME 4711 (INV-4711_ACME).pdf {x}"
        );
        assert_eq!(t.captures_used().collect::<Vec<_>>(), vec!["invoice_no"]);
    }

    #[test]
    fn given_unknown_placeholder_when_parsed_then_error_names_it() {
        let err =
            Template::parse("{yyyy}/{vendr}", &Scope::ingest_name(caps(&["vendor"]))).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, TemplateError::UnknownPlaceholder { ref placeholder, .. } if placeholder == "vendr")
        );
        assert!(msg.contains("{vendr}") && msg.contains("vendor"), "{msg}");
    }

    #[test]
    fn given_placeholder_outside_its_scope_when_parsed_then_refused() {
        assert!(Template::parse("{version}", &Scope::ingest_name(caps(&[]))).is_err());
        assert!(Template::parse("{transfer.sha256}", &Scope::ingest_name(caps(&[]))).is_err());
        assert!(Template::parse("{transfer.sha256}", &Scope::ingest_value(caps(&[]))).is_ok());
        assert!(Template::parse("{transfer.password}", &Scope::ingest_value(caps(&[]))).is_err());
        assert!(Template::parse("{name}", &Scope::dates_only()).is_err());
        assert!(Template::parse("{cat.9001_2}", &Scope::export_name()).is_ok());
        assert!(Template::parse("{meta.}", &Scope::ingest_name(caps(&[]))).is_err());
    }

    #[test]
    fn given_bad_brace_syntax_when_parsed_then_position_is_reported() {
        let e = Template::parse("abc{yyyy", &Scope::dates_only()).unwrap_err();
        assert!(
            matches!(e, TemplateError::Syntax { position: 3, .. }),
            "{e}"
        );
        let e = Template::parse("a}b", &Scope::dates_only()).unwrap_err();
        assert!(
            matches!(e, TemplateError::Syntax { position: 1, .. }),
            "{e}"
        );
    }

    #[test]
    fn given_value_with_slash_or_dotdot_when_rendered_as_path_then_refused() {
        let t = Template::parse(
            "In/{invoice_no}",
            &Scope::ingest_name(caps(&["invoice_no"])),
        )
        .unwrap();
        for evil in ["../etc", "a/b", "..", "a\\b", "", "x\0y"] {
            let mut c = ctx();
            c.captures.insert("invoice_no".into(), evil.into());
            assert!(t.render_path(&c).is_err(), "{evil:?} accepted");
        }
        let mut c = ctx();
        c.captures.insert("invoice_no".into(), "a\\b".into());
        assert_eq!(t.render_name_path(&c).unwrap(), vec!["In", "a\\b"]);
        c.captures.insert("invoice_no".into(), "..".into());
        assert!(t.render_name_path(&c).is_err());
        let e = Template::parse("a//b", &Scope::dates_only())
            .unwrap()
            .render_path(&ctx())
            .unwrap_err();
        assert!(matches!(e, TemplateError::UnsafeSegment { .. }));
    }

    #[test]
    fn given_missing_value_when_rendered_then_error_names_placeholder() {
        let t = Template::parse("{meta.po}", &Scope::ingest_name(caps(&[]))).unwrap();
        let e = t.render_value(&ctx()).unwrap_err();
        assert!(
            matches!(e, TemplateError::Missing { ref placeholder, .. } if placeholder == "meta.po")
        );
    }

    #[test]
    fn given_leading_and_trailing_slashes_or_empty_template_then_path_is_normalised() {
        let s = Scope::dates_only();
        assert_eq!(
            Template::parse("/archive/{yyyy-mm-dd}/", &s)
                .unwrap()
                .render_path(&ctx())
                .unwrap(),
            vec!["archive", "2026-03-07"]
        );
        assert!(
            Template::parse("", &s)
                .unwrap()
                .render_path(&ctx())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn given_names_when_split_then_dotfiles_and_multi_dots_are_handled() {
        assert_eq!(split_ext("a.tar.gz"), ("a.tar", "gz"));
        assert_eq!(split_ext(".env"), (".env", ""));
        assert_eq!(split_ext("README"), ("README", ""));
        assert_eq!(split_ext("x."), ("x", ""));
    }
}
