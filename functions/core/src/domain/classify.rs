//! Classification of one inbound file: content type by magic bytes, sidecar and
//! CSV-index metadata, and the route's rules (first match wins).
//!
//! Content types are decided from the first bytes only ([`HEAD_LEN`] is
//! enough), so the flow can classify before streaming the whole file. The
//! table is deliberately small; the point is to refuse a file whose extension
//! promises a type its bytes do not have (a `.pdf` that is an executable), not
//! to identify every format:
//!
//! | type  | bytes                                       | extensions promising it |
//! |-------|---------------------------------------------|-------------------------|
//! | pdf   | `%PDF-` within the first 1024 bytes         | pdf                     |
//! | zip   | `PK\x03\x04` or `PK\x05\x06` (empty zip)    | zip, docx, xlsx, pptx, odt, ods, jar |
//! | png   | `\x89PNG\r\n\x1a\n`                         | png                     |
//! | jpeg  | `FF D8 FF`                                  | jpg, jpeg               |
//! | gif   | `GIF87a` / `GIF89a`                         | gif                     |
//! | tiff  | `II*\0` / `MM\0*`                           | tif, tiff               |
//! | xml   | text starting with `<` (after BOM/space)    | xml                     |
//! | json  | text starting with `{` or `[`               | json                    |
//! | text  | UTF-8, no NUL or control chars but tab/CR/LF/FF | txt, csv, tsv       |
//!
//! xml and json are text too, so a `.csv` or `.txt` holding them is accepted.
//! An empty file counts as text; a route decides separately whether it may be
//! taken at all (see readiness).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::route::{Index, MatchOn, Place, Route, SidecarFormat, SidecarMode};
use super::template::split_ext;

/// How many leading bytes [`detect`] looks at.
pub const HEAD_LEN: usize = 1024;
/// Upper bound for sidecar and index files read into memory.
pub const MAX_SIDECAR_BYTES: usize = 1024 * 1024;
/// Upper bound for CSV index files.
pub const MAX_INDEX_BYTES: usize = 16 * 1024 * 1024;

/// Flat metadata from a sidecar or an index row: field → value.
pub type Metadata = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    Pdf,
    Zip,
    Png,
    Jpeg,
    Gif,
    Tiff,
    Xml,
    Json,
    Text,
    /// None of the above (binary of some other kind).
    Unknown,
}

impl FileType {
    pub fn as_str(self) -> &'static str {
        match self {
            FileType::Pdf => "pdf",
            FileType::Zip => "zip",
            FileType::Png => "png",
            FileType::Jpeg => "jpeg",
            FileType::Gif => "gif",
            FileType::Tiff => "tiff",
            FileType::Xml => "xml",
            FileType::Json => "json",
            FileType::Text => "text",
            FileType::Unknown => "unknown",
        }
    }

    /// MIME type for the upload.
    pub fn mime(self, ext: &str) -> &'static str {
        match (self, ext.to_ascii_lowercase().as_str()) {
            (FileType::Pdf, _) => "application/pdf",
            (FileType::Zip, "docx") => {
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
            }
            (FileType::Zip, "xlsx") => {
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            }
            (FileType::Zip, "pptx") => {
                "application/vnd.openxmlformats-officedocument.presentationml.presentation"
            }
            (FileType::Zip, _) => "application/zip",
            (FileType::Png, _) => "image/png",
            (FileType::Jpeg, _) => "image/jpeg",
            (FileType::Gif, _) => "image/gif",
            (FileType::Tiff, _) => "image/tiff",
            (FileType::Xml, _) => "application/xml",
            (FileType::Json, _) => "application/json",
            (FileType::Text, "csv") => "text/csv",
            (FileType::Text, _) => "text/plain",
            (FileType::Unknown, _) => "application/octet-stream",
        }
    }
}

/// The type an extension promises, if it promises one we can check.
pub fn promised_by_ext(ext: &str) -> Option<FileType> {
    Some(match ext.to_ascii_lowercase().as_str() {
        "pdf" => FileType::Pdf,
        "zip" | "docx" | "xlsx" | "pptx" | "odt" | "ods" | "jar" => FileType::Zip,
        "png" => FileType::Png,
        "jpg" | "jpeg" => FileType::Jpeg,
        "gif" => FileType::Gif,
        "tif" | "tiff" => FileType::Tiff,
        "xml" => FileType::Xml,
        "json" => FileType::Json,
        "txt" | "csv" | "tsv" => FileType::Text,
        _ => return None,
    })
}

/// Whether content detected as `detected` keeps the promise of `promised`.
pub fn keeps_promise(detected: FileType, promised: FileType) -> bool {
    detected == promised
        || (promised == FileType::Text && matches!(detected, FileType::Xml | FileType::Json))
}

fn is_text(head: &[u8]) -> bool {
    let valid = match std::str::from_utf8(head) {
        Ok(_) => true,
        // The head may cut a multi-byte character at its end.
        Err(e) => e.error_len().is_none() && head.len() - e.valid_up_to() < 4,
    };
    valid
        && !head
            .iter()
            .any(|&b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0c)) || b == 0x7f)
}

/// Detect the content type from the first bytes of a file.
pub fn detect(head: &[u8]) -> FileType {
    let head = &head[..head.len().min(HEAD_LEN)];
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return FileType::Zip;
    }
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        return FileType::Png;
    }
    if head.starts_with(&[0xff, 0xd8, 0xff]) {
        return FileType::Jpeg;
    }
    if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        return FileType::Gif;
    }
    if head.starts_with(b"II*\0") || head.starts_with(b"MM\0*") {
        return FileType::Tiff;
    }
    // PDF readers accept the header anywhere in the first 1024 bytes.
    if head.windows(5).any(|w| w == b"%PDF-") {
        return FileType::Pdf;
    }
    if is_text(head) {
        let body = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        return match first {
            Some(b'<') => FileType::Xml,
            Some(b'{') | Some(b'[') => FileType::Json,
            _ => FileType::Text,
        };
    }
    FileType::Unknown
}

// ---------------------------------------------------------------- metadata

/// A sidecar or index file that cannot be used. Permanent: the partner must
/// send a corrected file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}{}: {problem}",
    line.map(|l| format!(" line {l}")).unwrap_or_default(),
    column.as_ref().map(|c| format!(" column {c}")).unwrap_or_default())]
pub struct MetadataError {
    pub file: String,
    pub line: Option<u64>,
    /// Column number, or column name for CSV.
    pub column: Option<String>,
    pub problem: String,
}

impl MetadataError {
    fn new(file: &str, problem: impl Into<String>) -> Self {
        MetadataError {
            file: file.to_owned(),
            line: None,
            column: None,
            problem: problem.into(),
        }
    }

    fn at(mut self, line: u64, column: impl Into<String>) -> Self {
        self.line = Some(line);
        self.column = Some(column.into());
        self
    }

    pub fn is_retryable(&self) -> bool {
        false
    }
}

fn check_size(file: &str, bytes: &[u8], max: usize) -> Result<(), MetadataError> {
    if bytes.len() > max {
        return Err(MetadataError::new(
            file,
            format!("is {} bytes, more than the {max} allowed", bytes.len()),
        ));
    }
    Ok(())
}

fn check_value(file: &str, key: &str, v: &str) -> Result<(), MetadataError> {
    if key.is_empty() || key.len() > 128 {
        return Err(MetadataError::new(
            file,
            format!("field name {key:?} is empty or too long"),
        ));
    }
    if v.contains('\0') {
        return Err(MetadataError::new(
            file,
            format!("field {key:?} contains NUL"),
        ));
    }
    Ok(())
}

/// `<name>.json`: one flat object; strings, numbers and booleans become
/// strings, `null` means absent, nested values are refused.
pub fn parse_json_sidecar(file: &str, bytes: &[u8]) -> Result<Metadata, MetadataError> {
    check_size(file, bytes, MAX_SIDECAR_BYTES)?;
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        MetadataError::new(file, format!("invalid JSON: {e}"))
            .at(e.line() as u64, e.column().to_string())
    })?;
    let serde_json::Value::Object(obj) = value else {
        return Err(MetadataError::new(
            file,
            "must be a JSON object of field: value",
        ));
    };
    let mut out = Metadata::new();
    for (k, v) in obj {
        let s = match v {
            serde_json::Value::Null => continue,
            serde_json::Value::String(s) => s,
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => {
                return Err(MetadataError::new(
                    file,
                    format!("field {k:?} must be a string, number or boolean"),
                ));
            }
        };
        check_value(file, &k, &s)?;
        out.insert(k, s);
    }
    Ok(out)
}

fn line_col(text: &str, offset: u64) -> (u64, String) {
    let offset = (offset as usize).min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() as u64 + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col.to_string())
}

/// A field element's name as a metadata key: XML names are never empty and
/// hold no spaces, controls or markup characters (a lenient parser lets
/// `<>` through; that is a broken file, not a field named "").
fn xml_field_name(name: String) -> Result<String, String> {
    let bad = name.is_empty()
        || name.chars().any(|c| {
            c.is_control()
                || c.is_whitespace()
                || matches!(c, '<' | '>' | '&' | '"' | '\'' | '=' | '/')
        });
    if bad {
        Err(format!(
            "element name {:?} is not an XML name",
            name.escape_debug().to_string()
        ))
    } else {
        Ok(name)
    }
}

/// `<name>.xml`: a root element whose child elements are `field → text`, e.g.
/// `<doc><invoice_no>4711</invoice_no></doc>`. Deeper nesting, DTDs and
/// unknown entities are refused (no entity expansion, no external fetches).
pub fn parse_xml_sidecar(file: &str, bytes: &[u8]) -> Result<Metadata, MetadataError> {
    use quick_xml::events::Event;
    check_size(file, bytes, MAX_SIDECAR_BYTES)?;
    let text = std::str::from_utf8(bytes)
        .map_err(|e| MetadataError::new(file, format!("not UTF-8 at byte {}", e.valid_up_to())))?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut out = Metadata::new();
    let mut depth = 0usize;
    let mut field: Option<String> = None;
    let mut value = String::new();
    let mut root_seen = false;
    loop {
        let pos = reader.buffer_position();
        let err = |problem: String| {
            let (l, c) = line_col(text, pos);
            MetadataError::new(file, problem).at(l, c)
        };
        let event = reader.read_event().map_err(|e| {
            let (l, c) = line_col(text, reader.error_position());
            MetadataError::new(file, format!("invalid XML: {e}")).at(l, c)
        })?;
        match event {
            Event::DocType(_) => return Err(err("DOCTYPE is not allowed".into())),
            Event::Start(e) => {
                depth += 1;
                match depth {
                    1 if root_seen => return Err(err("more than one root element".into())),
                    1 => root_seen = true,
                    2 => {
                        let k = <_ as AsRef<str>>::as_ref(&e.local_name()).to_owned();
                        field = Some(xml_field_name(k).map_err(err)?);
                        value.clear();
                    }
                    _ => return Err(err("nested elements are not allowed below a field".into())),
                }
            }
            Event::Empty(e) => match depth {
                0 if root_seen => return Err(err("more than one root element".into())),
                0 => root_seen = true,
                1 => {
                    let k = <_ as AsRef<str>>::as_ref(&e.local_name()).to_owned();
                    let k = xml_field_name(k).map_err(err)?;
                    if out.insert(k.clone(), String::new()).is_some() {
                        return Err(err(format!("field {k:?} appears twice")));
                    }
                }
                _ => return Err(err("nested elements are not allowed below a field".into())),
            },
            Event::End(_) => {
                if depth == 2
                    && let Some(k) = field.take()
                {
                    let v = value.trim().to_owned();
                    check_value(file, &k, &v)?;
                    if out.insert(k.clone(), v).is_some() {
                        return Err(err(format!("field {k:?} appears twice")));
                    }
                }
                depth = depth.saturating_sub(1);
            }
            Event::Text(t) => {
                let s = t.xml10_content();
                if depth == 2 {
                    value.push_str(&s);
                } else if !s.trim().is_empty() {
                    return Err(err("text outside a field element".into()));
                }
            }
            Event::CData(t) if depth == 2 => value.push_str(&t.xml10_content()),
            Event::CData(_) => return Err(err("CDATA outside a field element".into())),
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => quick_xml::escape::resolve_predefined_entity(&r)
                        .ok_or_else(|| err(format!("unknown entity &{};", &*r)))?
                        .to_owned(),
                    Err(e) => return Err(err(format!("bad character reference: {e}"))),
                };
                if depth == 2 {
                    value.push_str(&c);
                } else {
                    return Err(err("text outside a field element".into()));
                }
            }
            Event::Eof if depth > 0 => {
                return Err(err(format!("{depth} element(s) not closed at end of file")));
            }
            Event::Eof => break,
            // Declaration, comments, processing instructions carry no metadata.
            _ => {}
        }
    }
    if !root_seen {
        return Err(MetadataError::new(file, "no root element"));
    }
    Ok(out)
}

/// An index row that was refused (the index's other rows are used).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedRow {
    /// Line in the index file (the header is line 1).
    pub line: u64,
    /// The file the row names, when it names one usably (its document then
    /// fails saying its row was refused, instead of going in without metadata).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Column name or number, when one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for RefusedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.column {
            Some(c) => write!(f, "line {} column {c}: {}", self.line, self.reason),
            None => write!(f, "line {}: {}", self.line, self.reason),
        }
    }
}

/// A CSV index as parsed: the usable rows (file → metadata) and the refused ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedIndex {
    pub rows: BTreeMap<String, Metadata>,
    pub refused: Vec<RefusedRow>,
}

/// A CSV index file: header row, one row per listed file; `file_column` names the
/// file (relative to the index's directory), every other column is metadata.
/// Returns file → metadata. Errors name the line and column. Strict: the
/// first bad row fails the whole index (see [`parse_csv_index_rows`] for
/// the flow's row-by-row reading).
pub fn parse_csv_index(
    file: &str,
    bytes: &[u8],
    index: &Index,
) -> Result<BTreeMap<String, Metadata>, MetadataError> {
    let parsed = parse_csv_index_rows(file, bytes, index)?;
    match parsed.refused.first() {
        Some(r) => Err(MetadataError::new(file, r.reason.clone()).at(r.line, r.column())),
        None => Ok(parsed.rows),
    }
}

impl RefusedRow {
    fn column(&self) -> String {
        self.column.clone().unwrap_or_else(|| "-".to_owned())
    }
}

/// Reads an index row by row: a problem with the file as a whole (too big,
/// header) is an error; a bad row is refused on its own, with its line and
/// reason, and the other rows are used. A file listed twice is refused on
/// both rows (which one is meant cannot be known).
pub fn parse_csv_index_rows(
    file: &str,
    bytes: &[u8],
    index: &Index,
) -> Result<ParsedIndex, MetadataError> {
    check_size(file, bytes, MAX_INDEX_BYTES)?;
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(index.delimiter)
        .has_headers(true)
        .flexible(false)
        .from_reader(bytes);
    let problem_of = |e: &csv::Error| match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => format!("not UTF-8 in field {}", err.field() + 1),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("has {len} fields, the header has {expected_len}"),
        _ => e.to_string(),
    };
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            let line = e.position().map_or(1, |p| p.line());
            let col = match e.kind() {
                csv::ErrorKind::Utf8 { err, .. } => (err.field() + 1).to_string(),
                _ => "-".to_owned(),
            };
            return Err(MetadataError::new(file, problem_of(&e)).at(line, col));
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    for (i, h) in headers.iter().enumerate() {
        if h.trim().is_empty() || !seen.insert(h.trim()) {
            return Err(
                MetadataError::new(file, format!("header {h:?} is empty or repeated"))
                    .at(1, (i + 1).to_string()),
            );
        }
    }
    let Some(file_col) = headers.iter().position(|h| h.trim() == index.file_column) else {
        return Err(MetadataError::new(
            file,
            format!(
                "has no column {:?} (header: {:?})",
                index.file_column,
                headers.iter().collect::<Vec<_>>()
            ),
        )
        .at(1, "-"));
    };
    let mut out = ParsedIndex::default();
    // file → first line it was seen on, for duplicates.
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    let mut duplicated: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut last_line = 1u64;
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e
                    .position()
                    .map_or(last_line + 1, |p| p.line().max(last_line + 1));
                last_line = line;
                let column = match e.kind() {
                    csv::ErrorKind::Utf8 { err, .. } => Some((err.field() + 1).to_string()),
                    _ => None,
                };
                out.refused.push(RefusedRow {
                    line,
                    file: None,
                    column,
                    reason: problem_of(&e),
                });
                // An I/O error would repeat forever; a reader over bytes has none.
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    break;
                }
                continue;
            }
        };
        // The reader counts `\n` only; a file with bare `\r` line ends
        // (old Mac exports) would put every row on line 1. Each row is at
        // least one line below the one before it.
        let line = record
            .position()
            .map_or(last_line + 1, |p| p.line().max(last_line + 1));
        last_line = line;
        let name = record.get(file_col).unwrap_or("").trim();
        let refuse = |file: Option<&str>, column: &str, reason: String| RefusedRow {
            line,
            file: file.map(str::to_owned),
            column: Some(column.to_owned()),
            reason,
        };
        let file_column = index.file_column.as_str();
        if name.is_empty() {
            out.refused
                .push(refuse(None, file_column, "file name is empty".to_owned()));
            continue;
        }
        // A line break inside the name is almost always an unclosed quote
        // that swallowed the rows after it: refused, so the rows it ate show
        // up as missing instead of a merged row silently matching nothing.
        if name.chars().any(char::is_control) {
            out.refused.push(refuse(
                None,
                file_column,
                format!(
                    "file name {:?} contains a line break or control character (an unclosed quote?)",
                    name.escape_debug().to_string()
                ),
            ));
            continue;
        }
        if name.starts_with('/')
            || name.contains('\\')
            || name
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == ".." || s.len() > 255)
        {
            out.refused.push(refuse(
                None,
                file_column,
                format!(
                    "file name {:?} must be a plain relative path",
                    name.escape_debug().to_string()
                ),
            ));
            continue;
        }
        let mut meta = Metadata::new();
        let mut bad = None;
        for (i, (h, v)) in headers.iter().zip(record.iter()).enumerate() {
            if i == file_col {
                continue;
            }
            let h = h.trim();
            if v.contains('\0') {
                bad = Some((h.to_owned(), format!("field {h:?} contains NUL")));
                break;
            }
            meta.insert(h.to_owned(), v.to_owned());
        }
        if let Some((column, reason)) = bad {
            out.refused.push(refuse(Some(name), &column, reason));
            // Still a listing of `name`: another row for it is ambiguous too.
            match lines.get(name) {
                Some(first) => duplicated
                    .entry(name.to_owned())
                    .or_insert_with(|| vec![*first])
                    .push(line),
                None => {
                    lines.insert(name.to_owned(), line);
                }
            }
            continue;
        }
        if let Some(first) = lines.get(name) {
            duplicated
                .entry(name.to_owned())
                .or_insert_with(|| vec![*first])
                .push(line);
            continue;
        }
        lines.insert(name.to_owned(), line);
        out.rows.insert(name.to_owned(), meta);
    }
    for (name, at) in duplicated {
        out.rows.remove(&name);
        let all = at.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        for line in at {
            // A row refused for its own fault keeps that reason.
            if out.refused.iter().any(|r| r.line == line) {
                continue;
            }
            out.refused.push(RefusedRow {
                line,
                file: Some(name.clone()),
                column: Some(index.file_column.clone()),
                reason: format!("file {name:?} is listed twice (lines {all})"),
            });
        }
    }
    out.refused.sort_by_key(|r| r.line);
    Ok(out)
}

/// Where the flow looks for a document's sidecars, in preference order.
pub fn sidecar_paths(route: &Route, rel_path: &str) -> Vec<(SidecarFormat, String)> {
    if route.config.sidecars.mode == SidecarMode::Off {
        return Vec::new();
    }
    route
        .config
        .sidecars
        .formats
        .iter()
        .map(|f| {
            let ext = match f {
                SidecarFormat::Json => "json",
                SidecarFormat::Xml => "xml",
            };
            (*f, format!("{rel_path}.{ext}"))
        })
        .collect()
}

/// Re-key parsed index rows by path relative to `source_dir`: names in an
/// index are relative to the index file's own directory.
pub fn index_rows_by_path(
    index_rel_path: &str,
    rows: BTreeMap<String, Metadata>,
) -> BTreeMap<String, Metadata> {
    let dir = index_rel_path.rsplit_once('/').map(|(d, _)| d);
    rows.into_iter()
        .map(|(name, meta)| match dir {
            Some(d) => (format!("{d}/{name}"), meta),
            None => (name, meta),
        })
        .collect()
}

/// A document's metadata from its index row and sidecar (the sidecar wins per
/// field: it is the more specific source). With `sidecars.mode = required`,
/// a document with neither is refused; an index row counts as metadata.
pub fn gather_metadata(
    route: &Route,
    rel_path: &str,
    sidecar: Option<(SidecarFormat, &str, &[u8])>,
    index_row: Option<&Metadata>,
) -> Result<Metadata, MetadataError> {
    let mode = route.config.sidecars.mode;
    let mut meta = index_row.cloned().unwrap_or_default();
    match sidecar {
        Some((format, path, bytes)) if mode != SidecarMode::Off => {
            let parsed = match format {
                SidecarFormat::Json => parse_json_sidecar(path, bytes)?,
                SidecarFormat::Xml => parse_xml_sidecar(path, bytes)?,
            };
            meta.extend(parsed);
        }
        None if mode == SidecarMode::Required && index_row.is_none() => {
            return Err(MetadataError::new(
                rel_path,
                "has no sidecar (.json/.xml) or index row, and the route requires one",
            ));
        }
        _ => {}
    }
    Ok(meta)
}

// ---------------------------------------------------------------- rules

/// One file to classify. `head` is its first bytes (up to [`HEAD_LEN`]).
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Path relative to the route's `source_dir`.
    pub rel_path: &'a str,
    pub size: u64,
    pub head: &'a [u8],
    /// Metadata from its sidecar or index row (empty if none).
    pub meta: &'a Metadata,
}

impl Candidate<'_> {
    pub fn name(&self) -> &str {
        self.rel_path.rsplit('/').next().unwrap_or(self.rel_path)
    }
}

/// A permanent refusal: the file goes to `failed/` with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{path}: extension .{ext} promises {} but the content is {}", promised.as_str(), detected.as_str())]
    TypeMismatch {
        path: String,
        ext: String,
        promised: FileType,
        detected: FileType,
    },
    #[error("{path}: no rule matches (type {}, {size} bytes) and the route's fallback is \"fail\"", detected.as_str())]
    NoRuleMatched {
        path: String,
        detected: FileType,
        size: u64,
    },
}

impl Refusal {
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// The outcome of classification.
#[derive(Debug, Clone)]
pub struct Classification<'r> {
    /// Name of the matching rule, `None` for the fallback.
    pub rule: Option<&'r str>,
    pub place: &'r Place,
    /// Named regex captures of the matching rule.
    pub captures: BTreeMap<String, String>,
    pub detected: FileType,
}

/// Check the content type, then find the first matching rule (or the fallback).
pub fn classify<'r>(route: &'r Route, c: &Candidate<'_>) -> Result<Classification<'r>, Refusal> {
    let detected = detect(c.head);
    let (_, ext) = split_ext(c.name());
    if let Some(promised) = promised_by_ext(ext)
        && !keeps_promise(detected, promised)
    {
        return Err(Refusal::TypeMismatch {
            path: c.rel_path.to_owned(),
            ext: ext.to_owned(),
            promised,
            detected,
        });
    }
    for rule in &route.rules {
        let m = &rule.matcher;
        let subject = match m.on {
            MatchOn::Name => c.name(),
            MatchOn::Path => c.rel_path,
        };
        if m.glob.as_ref().is_some_and(|g| !g.is_match(subject)) {
            continue;
        }
        let captures = match &m.regex {
            None => BTreeMap::new(),
            Some(re) => match re.captures(subject) {
                None => continue,
                Some(caps) => re
                    .capture_names()
                    .flatten()
                    .filter_map(|n| caps.name(n).map(|v| (n.to_owned(), v.as_str().to_owned())))
                    .collect(),
            },
        };
        if m.file_types
            .as_ref()
            .is_some_and(|t| !t.contains(&detected))
            || m.min_size.is_some_and(|lo| c.size < lo)
            || m.max_size.is_some_and(|hi| c.size > hi)
            || m.meta.iter().any(|(k, v)| c.meta.get(k) != Some(v))
        {
            continue;
        }
        return Ok(Classification {
            rule: Some(&rule.name),
            place: &rule.place,
            captures,
            detected,
        });
    }
    match &route.fallback {
        super::route::Fallback::Place(p) => Ok(Classification {
            rule: None,
            place: p,
            captures: BTreeMap::new(),
            detected,
        }),
        super::route::Fallback::Fail => Err(Refusal::NoRuleMatched {
            path: c.rel_path.to_owned(),
            detected,
            size: c.size,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::route::{RouteConfig, tests::sample};
    use serde_json::json;

    const PDF: &[u8] = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj";

    fn route(mutate: impl FnOnce(&mut serde_json::Value)) -> Route {
        let mut v = sample();
        mutate(&mut v);
        let c: RouteConfig = serde_json::from_value(v).unwrap();
        c.validate().unwrap()
    }

    fn cand<'a>(path: &'a str, head: &'a [u8], meta: &'a Metadata) -> Candidate<'a> {
        Candidate {
            rel_path: path,
            size: head.len() as u64,
            head,
            meta,
        }
    }

    #[test]
    fn given_magic_bytes_when_detected_then_table_types_are_recognised() {
        assert_eq!(detect(PDF), FileType::Pdf);
        assert_eq!(detect(b"\r\n%PDF-1.4"), FileType::Pdf);
        assert_eq!(detect(b"PK\x03\x04\x14\0"), FileType::Zip);
        assert_eq!(detect(b"\x89PNG\r\n\x1a\n\0\0"), FileType::Png);
        assert_eq!(detect(&[0xff, 0xd8, 0xff, 0xe0]), FileType::Jpeg);
        assert_eq!(detect(b"GIF89a"), FileType::Gif);
        assert_eq!(detect(b"II*\0"), FileType::Tiff);
        assert_eq!(
            detect(b"\xef\xbb\xbf  <?xml version=\"1.0\"?><a/>"),
            FileType::Xml
        );
        assert_eq!(detect(b"\n{\"a\":1}"), FileType::Json);
        assert_eq!(detect("id;name\n1;Müller\n".as_bytes()), FileType::Text);
        assert_eq!(detect(b""), FileType::Text);
        assert_eq!(detect(b"MZ\x90\0\x03\0"), FileType::Unknown);
        assert_eq!(detect(b"abc\0def"), FileType::Unknown);
        // A multi-byte character cut by the head boundary is still text.
        assert_eq!(detect(&"ü".as_bytes()[..1]), FileType::Text);
    }

    #[test]
    fn given_pdf_extension_with_exe_bytes_when_classified_then_refused_as_type_mismatch() {
        let r = route(|_| {});
        let m = Metadata::new();
        let e = classify(&r, &cand("a/INV-1_ACME.pdf", b"MZ\x90\0", &m)).unwrap_err();
        assert!(matches!(
            e,
            Refusal::TypeMismatch {
                promised: FileType::Pdf,
                detected: FileType::Unknown,
                ..
            }
        ));
        assert!(e.to_string().contains("a/INV-1_ACME.pdf"));
        // A .csv holding JSON keeps the "text" promise.
        assert!(keeps_promise(FileType::Json, FileType::Text));
        assert!(!keeps_promise(FileType::Text, FileType::Json));
    }

    #[test]
    fn given_matching_name_when_classified_then_first_rule_wins_with_captures() {
        let r = route(|v| {
            let mut second = v["rules"][0].clone();
            second["name"] = json!("any-pdf");
            second["match"] = json!({"glob": "*.pdf"});
            second["place"] = json!({"workspace": {"by": "node", "node_id": 2000}});
            v["rules"].as_array_mut().unwrap().push(second);
        });
        let m = Metadata::new();
        let c = classify(&r, &cand("x/INV-4711_ACME.pdf", PDF, &m)).unwrap();
        assert_eq!(c.rule, Some("invoice"));
        assert_eq!(c.captures["invoice_no"], "4711");
        assert_eq!(c.captures["vendor"], "ACME");
        assert_eq!(c.detected, FileType::Pdf);
        // The regex is anchored: a longer name falls through to the next rule.
        let c = classify(&r, &cand("x/old-INV-4711_ACME.pdf", PDF, &m)).unwrap();
        assert_eq!(c.rule, Some("any-pdf"));
    }

    #[test]
    fn given_size_type_or_meta_constraint_not_met_when_classified_then_rule_skipped() {
        let r = route(|v| {
            v["rules"][0]["match"]["min_size"] = json!(10);
            v["rules"][0]["match"]["meta"] = json!({"doc_type": "invoice"});
        });
        let mut m = Metadata::new();
        m.insert("doc_type".into(), "invoice".into());
        assert!(classify(&r, &cand("INV-1_A.pdf", PDF, &m)).is_ok());
        let small = &PDF[..8];
        assert!(matches!(
            classify(&r, &cand("INV-1_A.pdf", small, &m)),
            Err(Refusal::NoRuleMatched { .. })
        ));
        let other = Metadata::new();
        assert!(classify(&r, &cand("INV-1_A.pdf", PDF, &other)).is_err());
        // A text file with an unknown extension passes the type check but not file_types.
        assert!(classify(&r, &cand("INV-1_A.dat", b"hello", &m)).is_err());
    }

    #[test]
    fn given_no_match_and_place_fallback_when_classified_then_fallback_used() {
        let r = route(|v| {
            v["fallback"] = json!({"place": {"workspace": {"by": "node", "node_id": 2000}, "folder": "Unsorted/{yyyy-mm-dd}"}});
        });
        let m = Metadata::new();
        let c = classify(&r, &cand("random.txt", b"hi", &m)).unwrap();
        assert_eq!(c.rule, None);
    }

    #[test]
    fn given_json_sidecar_when_parsed_then_scalars_flattened_and_nesting_refused() {
        let m = parse_json_sidecar(
            "a.pdf.json",
            br#"{"po":"PO-1","amount":12.5,"paid":false,"x":null}"#,
        )
        .unwrap();
        assert_eq!(m["po"], "PO-1");
        assert_eq!(m["amount"], "12.5");
        assert_eq!(m["paid"], "false");
        assert!(!m.contains_key("x"));
        let e = parse_json_sidecar("a.pdf.json", br#"{"a":{"b":1}}"#).unwrap_err();
        assert!(e.to_string().contains("\"a\""), "{e}");
        let e = parse_json_sidecar("a.pdf.json", b"{\n\"a\": }").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.to_string().starts_with("a.pdf.json line 2 column"), "{e}");
        assert!(parse_json_sidecar("a.pdf.json", b"[1]").is_err());
    }

    #[test]
    fn given_xml_sidecar_when_parsed_then_flat_fields_and_entities_resolved() {
        let xml = b"<?xml version=\"1.0\"?>\n<doc>\n <po>PO&amp;1</po>\n <vendor><![CDATA[A<B]]></vendor>\n <empty/>\n <n>&#65;</n>\n</doc>";
        let m = parse_xml_sidecar("a.pdf.xml", xml).unwrap();
        assert_eq!(m["po"], "PO&1");
        assert_eq!(m["vendor"], "A<B");
        assert_eq!(m["empty"], "");
        assert_eq!(m["n"], "A");
    }

    #[test]
    fn given_hostile_or_malformed_xml_sidecar_when_parsed_then_refused_with_position() {
        let dtd =
            b"<?xml version=\"1.0\"?>\n<!DOCTYPE x [<!ENTITY a \"aaaa\">]>\n<doc><a>&a;</a></doc>";
        let e = parse_xml_sidecar("s.xml", dtd).unwrap_err();
        assert!(e.problem.contains("DOCTYPE"), "{e}");
        assert_eq!(e.line, Some(2));
        let e = parse_xml_sidecar("s.xml", b"<doc><a><b>1</b></a></doc>").unwrap_err();
        assert!(e.problem.contains("nested"), "{e}");
        let e = parse_xml_sidecar("s.xml", b"<doc><a>1</a>\n<a>2</a></doc>").unwrap_err();
        assert!(e.problem.contains("twice"), "{e}");
        assert!(parse_xml_sidecar("s.xml", b"<doc><a>1</b></doc>").is_err());
        assert!(parse_xml_sidecar("s.xml", b"<doc><a>&bogus;</a></doc>").is_err());
        assert!(parse_xml_sidecar("s.xml", b"").is_err());
        assert!(parse_xml_sidecar("s.xml", b"<doc><a>1</a>").is_err());
        assert!(parse_xml_sidecar("s.xml", b"<doc/><doc/>").is_err());
        assert!(parse_xml_sidecar("s.xml", b"\xff<doc/>").is_err());
    }

    #[test]
    fn given_sidecar_and_index_row_when_gathered_then_sidecar_wins_per_field() {
        let r = route(|_| {});
        let row: Metadata = [
            ("po".to_string(), "PO-1".to_string()),
            ("vendor".to_string(), "A".to_string()),
        ]
        .into();
        let m = gather_metadata(
            &r,
            "a.pdf",
            Some((SidecarFormat::Json, "a.pdf.json", br#"{"po":"PO-2"}"#)),
            Some(&row),
        )
        .unwrap();
        assert_eq!((m["po"].as_str(), m["vendor"].as_str()), ("PO-2", "A"));
        assert!(gather_metadata(&r, "a.pdf", None, None).unwrap().is_empty());
        let e = gather_metadata(
            &r,
            "a.pdf",
            Some((SidecarFormat::Xml, "a.pdf.xml", b"<a><b>")),
            None,
        )
        .unwrap_err();
        assert_eq!(e.file, "a.pdf.xml");
        assert_eq!(
            sidecar_paths(&r, "x/a.pdf"),
            vec![
                (SidecarFormat::Json, "x/a.pdf.json".to_string()),
                (SidecarFormat::Xml, "x/a.pdf.xml".to_string())
            ]
        );
    }

    #[test]
    fn given_required_sidecar_mode_when_document_has_none_then_refused_unless_indexed() {
        let r = route(|v| v["sidecars"] = json!({"mode": "required"}));
        let e = gather_metadata(&r, "a.pdf", None, None).unwrap_err();
        assert!(e.to_string().contains("requires"), "{e}");
        assert!(gather_metadata(&r, "a.pdf", None, Some(&Metadata::new())).is_ok());
        let off = route(|v| v["sidecars"] = json!({"mode": "off"}));
        assert!(sidecar_paths(&off, "a.pdf").is_empty());
    }

    #[test]
    fn given_index_in_subdir_when_rows_rekeyed_then_paths_relative_to_source_dir() {
        let rows: BTreeMap<String, Metadata> = [("a.pdf".to_string(), Metadata::new())].into();
        let keyed = index_rows_by_path("2026/index-1.csv", rows.clone());
        assert!(keyed.contains_key("2026/a.pdf"));
        assert!(index_rows_by_path("index-1.csv", rows).contains_key("a.pdf"));
    }

    #[test]
    fn given_an_unclosed_quote_when_parsed_then_the_merged_row_is_refused_naming_the_line_break() {
        // Found by the csv_index fuzz target: the quote opened on line 3
        // runs to the end, merging lines 3-4 into one row whose file name
        // holds a newline.
        let csv = "file,po\nINV-1.pdf,PO-1\n\"sub/INV 2.pdf,PO-2\nINV-3.pdf\",PO-3\n";
        let parsed = parse_csv_index_rows("index-1.csv", csv.as_bytes(), &index(',')).unwrap();
        assert_eq!(parsed.rows.keys().collect::<Vec<_>>(), ["INV-1.pdf"]);
        assert_eq!(parsed.refused.len(), 1, "{:?}", parsed.refused);
        assert_eq!(parsed.refused[0].line, 3);
        assert!(
            parsed.refused[0].reason.contains("unclosed quote"),
            "{}",
            parsed.refused[0].reason
        );
    }

    #[test]
    fn given_a_file_listed_by_a_bad_row_and_a_good_row_when_parsed_then_both_are_refused() {
        // Found by the csv_index fuzz target: the NUL row was refused, the
        // other row for the same file used, so the file was both.
        for csv in [
            "file,po\nINV-1.pdf,PO\u{0}1\nINV-1.pdf,PO-2\n",
            "file,po\nINV-1.pdf,PO-2\nINV-1.pdf,PO\u{0}1\n",
        ] {
            let parsed = parse_csv_index_rows("index-1.csv", csv.as_bytes(), &index(',')).unwrap();
            assert!(parsed.rows.is_empty(), "{csv:?}: {:?}", parsed.rows);
            let lines: Vec<u64> = parsed.refused.iter().map(|r| r.line).collect();
            assert_eq!(lines, [2, 3], "{csv:?}: {:?}", parsed.refused);
            assert!(parsed.refused.iter().any(|r| r.reason.contains("NUL")));
            assert!(
                parsed
                    .refused
                    .iter()
                    .any(|r| r.reason.contains("listed twice"))
            );
        }
    }

    #[test]
    fn given_an_xml_element_without_a_name_when_parsed_then_refused() {
        // Found by the sidecars fuzz target (its input, minimised by hand):
        // an empty element without a name became a field named "".
        let e = parse_xml_sidecar("a.pdf.xml", b"<doc><\n/></doc>").unwrap_err();
        assert!(e.problem.contains("not an XML name"), "{e:?}");
        // And a later empty element replaced an earlier field's value.
        let e = parse_xml_sidecar("a.pdf.xml", b"<doc><po>1</po><po/></doc>").unwrap_err();
        assert!(e.problem.contains("appears twice"), "{e:?}");
    }

    #[test]
    fn given_bare_cr_line_ends_when_a_row_is_refused_then_its_line_is_below_the_header() {
        // Found by the csv_index fuzz target: a refused row reported as line 1.
        let csv = "file,po\rINV-1.pdf,PO-1\r../x.pdf,PO-2\r";
        let parsed = parse_csv_index_rows("index-1.csv", csv.as_bytes(), &index(',')).unwrap();
        assert_eq!(parsed.rows.keys().collect::<Vec<_>>(), ["INV-1.pdf"]);
        let lines: Vec<u64> = parsed.refused.iter().map(|r| r.line).collect();
        assert_eq!(lines, [3], "{:?}", parsed.refused);
    }

    fn index(delim: char) -> Index {
        Index {
            pattern: globset::Glob::new("index*.csv").unwrap().compile_matcher(),
            file_column: "file".into(),
            delimiter: delim as u8,
        }
    }

    #[test]
    fn given_csv_index_when_parsed_then_each_listed_file_gets_its_row() {
        let csv = "\u{feff}file;po;vendor\nINV-1_A.pdf;PO-1;ACME\n\"sub/INV 2.pdf\";PO-2;\"Müller; GmbH\"\n";
        let m = parse_csv_index("index.csv", csv.as_bytes(), &index(';')).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m["INV-1_A.pdf"]["po"], "PO-1");
        assert_eq!(m["sub/INV 2.pdf"]["vendor"], "Müller; GmbH");
        assert!(!m["INV-1_A.pdf"].contains_key("file"));
    }

    #[test]
    fn given_bad_csv_index_when_parsed_then_error_names_line_and_column() {
        let e = parse_csv_index("i.csv", b"file,po\na.pdf,1\nb.pdf\n", &index(',')).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        let e = parse_csv_index("i.csv", b"name,po\na.pdf,1\n", &index(',')).unwrap_err();
        assert!(e.problem.contains("no column \"file\""), "{e}");
        let e = parse_csv_index("i.csv", b"file,po\na.pdf,1\n../x,2\n", &index(',')).unwrap_err();
        assert_eq!(
            (e.line, e.column.as_deref()),
            (Some(3), Some("file")),
            "{e}"
        );
        let e = parse_csv_index("i.csv", b"file,po\na.pdf,1\na.pdf,2\n", &index(',')).unwrap_err();
        assert!(e.problem.contains("twice") && e.line == Some(2), "{e}");
        let e = parse_csv_index("i.csv", b"file,po\na.pdf,\xff\n", &index(',')).unwrap_err();
        assert_eq!((e.line, e.column.as_deref()), (Some(2), Some("2")), "{e}");
        let e = parse_csv_index("i.csv", b"file,file\na,b\n", &index(',')).unwrap_err();
        assert!(e.problem.contains("repeated"), "{e}");
    }

    #[test]
    fn given_index_with_bad_rows_when_read_row_by_row_then_others_kept_and_refusals_listed() {
        let csv = b"file,po\n../../etc/passwd,X\na.pdf,1\nb.pdf,2\nb.pdf,3\nc.pdf\nd.pdf,P\0\n,9\ne.pdf,\xff\nf.pdf,6\n";
        let p = parse_csv_index_rows("i.csv", csv, &index(',')).unwrap();
        assert_eq!(p.rows.keys().collect::<Vec<_>>(), ["a.pdf", "f.pdf"]);
        let lines: Vec<(u64, Option<&str>)> = p
            .refused
            .iter()
            .map(|r| (r.line, r.file.as_deref()))
            .collect();
        assert_eq!(
            lines,
            [
                (2, None),
                (4, Some("b.pdf")),
                (5, Some("b.pdf")),
                (6, None),
                (7, Some("d.pdf")),
                (8, None),
                (9, None)
            ]
        );
        assert!(p.refused[0].to_string().contains("plain relative path"));
        assert!(p.refused[1].reason.contains("lines 4, 5"));
        // A problem with the whole file is still an error.
        assert!(parse_csv_index_rows("i.csv", b"name,po\na,1\n", &index(',')).is_err());
    }
}
