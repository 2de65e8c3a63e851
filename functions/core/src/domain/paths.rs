//! Checked remote paths for the `FileStore` port.
//!
//! Every SFTP path the flows use is built from a [`RemoteRoot`] (the directory
//! a route is confined to, from configuration) and names that come from
//! listings or templates. Parsing once here means no adapter or flow has to
//! re-check for `..`, NUL or an escape from the root, and nothing builds a
//! remote path by string concatenation of untrusted input.
//!
//! Decisions:
//! - Paths are absolute and normalised (`/a/b`, no `.`/`..`, no empty or
//!   trailing segments). Relative input is taken relative to the root.
//! - Paths are byte strings, not `String`: partner servers may hold names
//!   that are not UTF-8, and a file we list must be addressable again.
//!   Display is lossy.
//! - Control characters other than NUL are allowed in names (they exist on
//!   real partner servers); NUL cannot be sent over SFTP and is refused.
//!   Callers that write names they invent should use names from templates,
//!   which the domain rules check.

use std::fmt;

use thiserror::Error;

/// Why a remote path or name was refused. Permanent: retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("remote path {path:?} is empty")]
    Empty { path: String },
    #[error("remote path {path:?} contains a NUL byte")]
    Nul { path: String },
    #[error("remote path {path:?} contains a `..` segment")]
    DotDot { path: String },
    #[error("remote root {path:?} must be absolute (start with `/`)")]
    RootNotAbsolute { path: String },
    #[error("remote path {path:?} is outside the root {root:?}")]
    OutsideRoot { path: String, root: String },
    #[error("file name {name:?} is not a single path segment (empty, `.`, `..` or contains `/`)")]
    BadName { name: String },
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Normalises an absolute byte path: collapses `//` and `.`, refuses `..`
/// and NUL. Returns `/` for the root.
fn normalise(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    if raw.contains(&0) {
        return Err(PathError::Nul { path: lossy(raw) });
    }
    let mut out = Vec::with_capacity(raw.len() + 1);
    for seg in raw.split(|b| *b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => return Err(PathError::DotDot { path: lossy(raw) }),
            s => {
                out.push(b'/');
                out.extend_from_slice(s);
            }
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Ok(out)
}

/// The directory a store or route is confined to (absolute, normalised).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RemoteRoot(Vec<u8>);

impl RemoteRoot {
    /// Parses an absolute root such as `/`, `/upload` or `/data/partner-a/`.
    pub fn parse(root: &str) -> Result<Self, PathError> {
        if root.is_empty() {
            return Err(PathError::Empty {
                path: root.to_owned(),
            });
        }
        if !root.starts_with('/') {
            return Err(PathError::RootNotAbsolute {
                path: root.to_owned(),
            });
        }
        Ok(Self(normalise(root.as_bytes())?))
    }

    /// The root itself as a path (e.g. to list it).
    pub fn path(&self) -> RemotePath {
        RemotePath {
            bytes: self.0.clone(),
            root_len: self.0.len(),
        }
    }

    /// Resolves `input` against the root: a relative path is taken below the
    /// root; an absolute one must lie within it. `..` is refused outright
    /// rather than resolved, so no spelling can climb out.
    pub fn resolve(&self, input: &str) -> Result<RemotePath, PathError> {
        self.resolve_bytes(input.as_bytes())
    }

    /// [`Self::resolve`] for raw (possibly non-UTF-8) input.
    pub fn resolve_bytes(&self, input: &[u8]) -> Result<RemotePath, PathError> {
        if input.is_empty() {
            return Err(PathError::Empty {
                path: String::new(),
            });
        }
        let joined;
        let abs = if input.first() == Some(&b'/') {
            input
        } else {
            joined = [self.0.as_slice(), b"/", input].concat();
            joined.as_slice()
        };
        let norm = normalise(abs)?;
        if !is_within(&self.0, &norm) {
            return Err(PathError::OutsideRoot {
                path: lossy(input),
                root: lossy(&self.0),
            });
        }
        Ok(RemotePath {
            bytes: norm,
            root_len: self.0.len(),
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for RemoteRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for RemoteRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteRoot({:?})", String::from_utf8_lossy(&self.0))
    }
}

/// `path` equals `root` or lies below it (segment-wise, so `/data2` is not
/// inside `/data`).
fn is_within(root: &[u8], path: &[u8]) -> bool {
    if root == b"/" {
        return true;
    }
    path == root || (path.starts_with(root) && path.get(root.len()) == Some(&b'/'))
}

/// An absolute, normalised remote path known to lie within its root.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemotePath {
    bytes: Vec<u8>,
    /// Length of the root prefix, so `parent()` never climbs above it.
    root_len: usize,
}

/// Checks one file name (a single path segment).
fn check_name(name: &[u8]) -> Result<(), PathError> {
    if name.contains(&0) {
        return Err(PathError::Nul { path: lossy(name) });
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(PathError::BadName { name: lossy(name) });
    }
    Ok(())
}

impl RemotePath {
    /// The child `name` of this directory. `name` must be one segment: no
    /// `/`, not `.`/`..`, no NUL.
    pub fn join(&self, name: impl AsRef<[u8]>) -> Result<RemotePath, PathError> {
        let name = name.as_ref();
        check_name(name)?;
        let mut bytes = self.bytes.clone();
        if bytes != b"/" {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(name);
        Ok(RemotePath {
            bytes,
            root_len: self.root_len,
        })
    }

    /// A sibling of this path (same parent, other name), e.g. the temporary
    /// `.name.part` of an atomic put. `None` for the root.
    pub fn with_name(&self, name: impl AsRef<[u8]>) -> Result<Option<RemotePath>, PathError> {
        match self.parent() {
            Some(p) => p.join(name).map(Some),
            None => Ok(None),
        }
    }

    /// The parent directory, or `None` at the root (never above it).
    pub fn parent(&self) -> Option<RemotePath> {
        if self.bytes.len() <= self.root_len {
            return None;
        }
        let cut = self.bytes.iter().rposition(|b| *b == b'/')?;
        let bytes = if cut == 0 {
            b"/".to_vec()
        } else {
            self.bytes[..cut].to_vec()
        };
        Some(RemotePath {
            bytes,
            root_len: self.root_len,
        })
    }

    /// The last segment; empty for `/`.
    pub fn file_name(&self) -> &[u8] {
        match self.bytes.iter().rposition(|b| *b == b'/') {
            Some(i) => &self.bytes[i + 1..],
            None => &self.bytes,
        }
    }

    /// The last segment, lossily decoded for display and templates.
    pub fn file_name_lossy(&self) -> String {
        lossy(self.file_name())
    }

    pub fn is_root(&self) -> bool {
        self.bytes.len() <= self.root_len
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The path relative to its root (no leading `/`), e.g. for manifests.
    pub fn relative_to_root(&self) -> String {
        let rel = &self.bytes[self.root_len.min(self.bytes.len())..];
        lossy(rel.strip_prefix(b"/").unwrap_or(rel))
    }

    /// The path as text; lossy if the name is not UTF-8.
    pub fn to_string_lossy(&self) -> String {
        lossy(&self.bytes)
    }

    /// The segments below the root, outermost first (for `mkdir -p`).
    pub fn ancestors_below_root(&self) -> Vec<RemotePath> {
        let mut out = Vec::new();
        let mut cur = Some(self.clone());
        while let Some(p) = cur {
            if p.is_root() {
                break;
            }
            cur = p.parent();
            out.push(p);
        }
        out.reverse();
        out
    }
}

impl fmt::Display for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.bytes))
    }
}

impl fmt::Debug for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemotePath({:?})", String::from_utf8_lossy(&self.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(s: &str) -> RemoteRoot {
        RemoteRoot::parse(s).unwrap()
    }

    #[test]
    fn relative_and_absolute_inputs_resolve_below_the_root() {
        let r = root("/data/partner/");
        assert_eq!(
            r.resolve("in/a.pdf").unwrap().to_string(),
            "/data/partner/in/a.pdf"
        );
        assert_eq!(
            r.resolve("/data/partner//in/./a.pdf").unwrap().to_string(),
            "/data/partner/in/a.pdf"
        );
        assert_eq!(
            r.resolve("/data/partner").unwrap().to_string(),
            "/data/partner"
        );
        assert_eq!(r.resolve(".").unwrap().to_string(), "/data/partner");
    }

    #[test]
    fn escapes_are_refused() {
        let r = root("/data");
        assert!(matches!(
            r.resolve("../etc/passwd"),
            Err(PathError::DotDot { .. })
        ));
        assert!(matches!(
            r.resolve("in/../../x"),
            Err(PathError::DotDot { .. })
        ));
        assert!(matches!(
            r.resolve("/etc/passwd"),
            Err(PathError::OutsideRoot { .. })
        ));
        // A sibling sharing the prefix is not inside.
        assert!(matches!(
            r.resolve("/data2/x"),
            Err(PathError::OutsideRoot { .. })
        ));
        assert!(matches!(r.resolve("a\0b"), Err(PathError::Nul { .. })));
        assert!(matches!(r.resolve(""), Err(PathError::Empty { .. })));
        assert!(matches!(
            RemoteRoot::parse("data"),
            Err(PathError::RootNotAbsolute { .. })
        ));
        assert!(matches!(
            RemoteRoot::parse("/a/../b"),
            Err(PathError::DotDot { .. })
        ));
    }

    #[test]
    fn join_accepts_only_single_segments() {
        let d = root("/data").resolve("in").unwrap();
        assert_eq!(d.join("a.pdf").unwrap().to_string(), "/data/in/a.pdf");
        for bad in ["", ".", "..", "a/b", "/x", "a\0"] {
            assert!(d.join(bad).is_err(), "{bad:?} accepted");
        }
        // Control characters and non-UTF-8 bytes exist on partner servers.
        let odd = d.join(b"r\xe9sum\xe9\t.pdf").unwrap();
        assert_eq!(odd.file_name(), b"r\xe9sum\xe9\t.pdf");
    }

    #[test]
    fn parent_stops_at_the_root() {
        let r = root("/data");
        let p = r.resolve("a/b/c.txt").unwrap();
        let chain: Vec<String> = p
            .ancestors_below_root()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(chain, ["/data/a", "/data/a/b", "/data/a/b/c.txt"]);
        assert_eq!(r.path().parent(), None);
        assert_eq!(
            r.resolve("a").unwrap().parent().unwrap().to_string(),
            "/data"
        );
        assert_eq!(p.relative_to_root(), "a/b/c.txt");
        assert_eq!(
            p.with_name(".c.txt.part").unwrap().unwrap().to_string(),
            "/data/a/b/.c.txt.part"
        );
    }

    #[test]
    fn slash_root_contains_everything_but_dotdot() {
        let r = root("/");
        assert_eq!(r.resolve("/etc").unwrap().to_string(), "/etc");
        assert_eq!(r.path().join("x").unwrap().to_string(), "/x");
        assert!(r.resolve("/../x").is_err());
    }
}
