//! A streaming zip writer for export packages: entries are *stored* (most
//! package content — PDF, Office, images — is compressed already), every
//! entry uses a data descriptor (CRC and sizes follow the data, so nothing
//! is buffered) and zip64 fields (so neither an entry nor the archive is
//! capped at 4 GiB). Entry names come from `manifest::entry_paths`, which
//! makes them safe relative paths (no zip-slip); the writer checks again.
//!
//! Format: PKWARE APPNOTE 6.3.x, sections 4.3.7 (local header), 4.3.9 (data
//! descriptor), 4.3.12 (central directory), 4.3.14–4.3.16 (zip64 end records),
//! 4.5.3 (zip64 extra field).

use crate::domain::manifest::is_safe_entry_path;

const LOCAL_SIG: u32 = 0x0403_4b50;
const DESCRIPTOR_SIG: u32 = 0x0807_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
/// 4.5: zip64 needs version 4.5.
const VERSION: u16 = 45;
/// Bit 3: sizes and CRC in a data descriptor; bit 11: names are UTF-8.
const FLAGS: u16 = 0x0808;
/// 1980-01-01, 00:00 (MS-DOS date/time): packages carry their dates in
/// manifest.json, not in the zip.
const DOS_DATE: u16 = 0x0021;

/// CRC-32 (IEEE 802.3, reflected), table-driven.
#[derive(Debug, Clone)]
pub struct Crc32 {
    value: u32,
}

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

impl Default for Crc32 {
    fn default() -> Self {
        Self { value: 0xFFFF_FFFF }
    }
}

impl Crc32 {
    pub fn update(&mut self, bytes: &[u8]) {
        let mut c = self.value;
        for b in bytes {
            c = CRC_TABLE[((c ^ u32::from(*b)) & 0xFF) as usize] ^ (c >> 8);
        }
        self.value = c;
    }

    pub fn finish(&self) -> u32 {
        self.value ^ 0xFFFF_FFFF
    }
}

/// What the central directory needs about a written entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    pub name: String,
    pub crc32: u32,
    pub size: u64,
    pub offset: u64,
}

/// Tracks offsets while the archive is produced as a sequence of byte blocks.
#[derive(Debug, Default)]
pub struct ZipWriter {
    offset: u64,
    entries: Vec<ZipEntry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ZipError {
    #[error("zip entry name {0:?} is not a safe relative path")]
    UnsafeName(String),
    #[error("zip entry name {0:?} is longer than 65535 bytes")]
    NameTooLong(String),
}

fn put16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

impl ZipWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes produced so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The local header of the next entry; its data follows, then
    /// [`ZipWriter::end_entry`].
    pub fn begin_entry(&mut self, name: &str) -> Result<Vec<u8>, ZipError> {
        if !is_safe_entry_path(name) {
            return Err(ZipError::UnsafeName(name.to_owned()));
        }
        let name_len =
            u16::try_from(name.len()).map_err(|_| ZipError::NameTooLong(name.to_owned()))?;
        self.entries.push(ZipEntry {
            name: name.to_owned(),
            crc32: 0,
            size: 0,
            offset: self.offset,
        });
        let mut v = Vec::with_capacity(30 + name.len() + 20);
        put32(&mut v, LOCAL_SIG);
        put16(&mut v, VERSION);
        put16(&mut v, FLAGS);
        put16(&mut v, 0); // stored
        put16(&mut v, 0); // time
        put16(&mut v, DOS_DATE);
        put32(&mut v, 0); // CRC: in the descriptor
        put32(&mut v, 0xFFFF_FFFF); // sizes: in the zip64 extra / descriptor
        put32(&mut v, 0xFFFF_FFFF);
        put16(&mut v, name_len);
        put16(&mut v, 20);
        v.extend_from_slice(name.as_bytes());
        put16(&mut v, 0x0001); // zip64 extended information
        put16(&mut v, 16);
        put64(&mut v, 0);
        put64(&mut v, 0);
        self.offset += v.len() as u64;
        Ok(v)
    }

    /// Counts `n` data bytes of the current entry.
    pub fn data(&mut self, n: u64) {
        self.offset += n;
    }

    /// The data descriptor closing the current entry.
    pub fn end_entry(&mut self, crc32: u32, size: u64) -> Vec<u8> {
        if let Some(e) = self.entries.last_mut() {
            e.crc32 = crc32;
            e.size = size;
        }
        let mut v = Vec::with_capacity(24);
        put32(&mut v, DESCRIPTOR_SIG);
        put32(&mut v, crc32);
        put64(&mut v, size);
        put64(&mut v, size);
        self.offset += v.len() as u64;
        v
    }

    /// Central directory and end records.
    pub fn finish(&mut self) -> Vec<u8> {
        let cd_offset = self.offset;
        let mut v = Vec::new();
        for e in &self.entries {
            put32(&mut v, CENTRAL_SIG);
            put16(&mut v, VERSION);
            put16(&mut v, VERSION);
            put16(&mut v, FLAGS);
            put16(&mut v, 0);
            put16(&mut v, 0);
            put16(&mut v, DOS_DATE);
            put32(&mut v, e.crc32);
            put32(&mut v, 0xFFFF_FFFF);
            put32(&mut v, 0xFFFF_FFFF);
            // Names were checked to fit in begin_entry.
            put16(&mut v, e.name.len() as u16);
            put16(&mut v, 28);
            put16(&mut v, 0); // comment
            put16(&mut v, 0); // disk
            put16(&mut v, 0); // internal attributes
            put32(&mut v, 0); // external attributes
            put32(&mut v, 0xFFFF_FFFF);
            v.extend_from_slice(e.name.as_bytes());
            put16(&mut v, 0x0001);
            put16(&mut v, 24);
            put64(&mut v, e.size);
            put64(&mut v, e.size);
            put64(&mut v, e.offset);
        }
        let cd_size = v.len() as u64;
        let zip64_eocd = cd_offset + cd_size;
        let n = self.entries.len() as u64;
        put32(&mut v, ZIP64_EOCD_SIG);
        put64(&mut v, 44);
        put16(&mut v, VERSION);
        put16(&mut v, VERSION);
        put32(&mut v, 0);
        put32(&mut v, 0);
        put64(&mut v, n);
        put64(&mut v, n);
        put64(&mut v, cd_size);
        put64(&mut v, cd_offset);
        put32(&mut v, ZIP64_LOCATOR_SIG);
        put32(&mut v, 0);
        put64(&mut v, zip64_eocd);
        put32(&mut v, 1);
        put32(&mut v, EOCD_SIG);
        put16(&mut v, 0);
        put16(&mut v, 0);
        put16(&mut v, 0xFFFF);
        put16(&mut v, 0xFFFF);
        put32(&mut v, 0xFFFF_FFFF);
        put32(&mut v, 0xFFFF_FFFF);
        put16(&mut v, 0);
        self.offset += v.len() as u64;
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        let mut c = Crc32::default();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xCBF4_3926);
    }

    #[test]
    fn unsafe_names_are_refused() {
        let mut w = ZipWriter::new();
        for bad in ["../x", "/etc/passwd", "a/../../b", "C:/x", "a\\b", ""] {
            assert!(w.begin_entry(bad).is_err(), "{bad}");
        }
    }

    /// Python's zipfile, an independent reader, tests the archive when
    /// python3 is available (it is on the build machines).
    #[test]
    fn python_zipfile_reads_the_archive() {
        let mut w = ZipWriter::new();
        let mut out = Vec::new();
        for (name, data) in [
            ("a.txt", &b"hello"[..]),
            ("dir/b.bin", &[0u8, 1, 2, 255][..]),
        ] {
            out.extend(w.begin_entry(name).unwrap());
            out.extend_from_slice(data);
            w.data(data.len() as u64);
            let mut c = Crc32::default();
            c.update(data);
            out.extend(w.end_entry(c.finish(), data.len() as u64));
        }
        out.extend(w.finish());
        assert_eq!(w.offset(), out.len() as u64);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.zip");
        std::fs::write(&p, &out).unwrap();
        let script = "import sys,zipfile\nz=zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\nprint(sorted((i.filename,i.file_size) for i in z.infolist()), z.read('a.txt'))";
        let Ok(o) = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&p)
            .output()
        else {
            eprintln!("python3 not available; skipped");
            return;
        };
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(text.trim(), "[('a.txt', 5), ('dir/b.bin', 4)] b'hello'");
    }
}
