//! Compiled calls for replay: each recorded call file, once parsed, is kept in a cache
//! directory in a compact binary form holding only what the evaluator reads (its timed
//! events, its queue, its counts), so later runs read a fraction of the bytes and parse no
//! JSON.
//!
//! # Never stale, never corrupt
//!
//! A cache file is named after a hash of the source's canonical path ([`source_id`]), and
//! starts with a header that must match byte for byte: magic, [`FORMAT_VERSION`], the
//! source's size, modification time, change time and inode ([`SourceKey`]), and the path. Editing,
//! replacing, truncating or `touch`ing the source changes the key, so the entry is rebuilt.
//! The key is taken *before* the source is read: a file changing while it is parsed leaves an
//! entry under the old key, which the next run rejects. On file systems with whole-second
//! times, a source modified in the last two seconds is not cached (it could change again
//! within the same second, unseen).
//!
//! Entries are written to a temporary file and renamed into place, so a crash mid-write
//! leaves either the old entry or none. On read, the payload length and a checksum are
//! checked and every field is bounds-checked while decoding: garbage, a truncated file or
//! one from another version is a miss (rebuilt), never a panic.
//!
//! # Layout (little-endian)
//!
//! Header: `GCREPLAY`, version u32, size u64, mtime s i64 + ns u32, ctime s i64 + ns u32,
//! inode u64, path (varint length + bytes). Then payload length u64, checksum u64, payload:
//! lines, utterances (varints), queue id (0, or 1 + string), step count, then per step the
//! time as a zigzag varint delta from the previous one and a tagged event:
//! 0 `AgentConnected` (zigzag varint ms), 1 `ConversationEnded`, 2 `Sentiment` (f64),
//! 3 `Utterance` (flags: final, channel, has confidence, has id; confidence f64; text; id).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use super::events::{Channel, Event, Utterance};

/// Bump when the layout or the meaning of any field changes: older entries become misses.
pub const FORMAT_VERSION: u32 = 1;

const MAGIC: &[u8; 8] = b"GCREPLAY";

/// What can go wrong with the cache itself (never with the calls: those errors are replay's).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot use {dir} as the replay cache: {source}")]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("cannot write the replay cache in {dir}: {source}")]
    Write { dir: PathBuf, source: std::io::Error },
    #[error("cannot read the replay cache entry {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cache entry is damaged or of another format: {0}")]
    Corrupt(&'static str),
}

/// What identifies one version of a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceKey {
    pub len: u64,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    pub inode: u64,
}

impl SourceKey {
    /// The key of a file's current version.
    pub fn of(meta: &std::fs::Metadata) -> SourceKey {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            let ns = |n: i64| u32::try_from(n).unwrap_or(0);
            SourceKey {
                len: meta.len(),
                mtime: (meta.mtime(), ns(meta.mtime_nsec())),
                ctime: (meta.ctime(), ns(meta.ctime_nsec())),
                inode: meta.ino(),
            }
        }
        #[cfg(not(unix))]
        {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or((0, 0), |d| (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()));
            SourceKey { len: meta.len(), mtime, ctime: (0, 0), inode: 0 }
        }
    }

    /// Modified so recently, on a file system with whole-second times, that a further
    /// change in the same second would keep the key: not safe to cache yet.
    pub fn is_racy(&self, now_epoch_s: i64) -> bool {
        self.mtime.1 == 0 && now_epoch_s.saturating_sub(self.mtime.0) < 2
    }
}

/// What a call file compiles to: everything of `replay::Call` that comes from the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub queue_id: Option<String>,
    pub steps: Vec<(i64, Event)>,
    pub utterances: u64,
    pub lines: u64,
}

/// A cache directory of compiled calls.
#[derive(Debug, Clone)]
pub struct CallCache {
    dir: PathBuf,
}

/// Makes temporary names unique among the threads of this process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl CallCache {
    /// Opens (creating it when needed) a cache directory.
    pub fn open(dir: &Path) -> Result<CallCache, CacheError> {
        std::fs::create_dir_all(dir).map_err(|source| CacheError::Dir { dir: dir.to_path_buf(), source })?;
        if !dir.is_dir() {
            let source = std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a folder");
            return Err(CacheError::Dir { dir: dir.to_path_buf(), source });
        }
        Ok(CallCache { dir: dir.to_path_buf() })
    }

    /// The default location: `$XDG_CACHE_HOME/gc-assist/replay`, else
    /// `~/.cache/gc-assist/replay` (`%LOCALAPPDATA%` on Windows); `None` when neither is known.
    pub fn default_dir() -> Option<PathBuf> {
        let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let base = nonempty("XDG_CACHE_HOME")
            .or_else(|| nonempty("HOME").map(|h| h.join(".cache")))
            .or_else(|| nonempty("LOCALAPPDATA"))?;
        Some(base.join("gc-assist").join("replay"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry file of a source, by its [`source_id`].
    pub fn entry_path(&self, source_id: &str) -> PathBuf {
        let digest = Sha256::digest(source_id.as_bytes());
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.call"))
    }

    /// The compiled call of `source` at version `key`: `Ok(None)` when there is no entry or
    /// it is stale, damaged or of another format (rebuild it); `Err` only when the entry
    /// exists but cannot be read.
    pub fn get(&self, source_id: &str, key: &SourceKey) -> Result<Option<Compiled>, CacheError> {
        let path = self.entry_path(source_id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Read { path, source }),
        };
        Ok(decode(&bytes, &header(source_id, key)).ok())
    }

    /// Stores the compiled call of `source` at version `key`, atomically.
    pub fn put(&self, source_id: &str, key: &SourceKey, call: &Compiled) -> Result<(), CacheError> {
        let bytes = encode(&header(source_id, key), call);
        let path = self.entry_path(source_id);
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let temp = self.dir.join(format!(".tmp-{}-{seq}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&temp)?;
            f.write_all(&bytes)?;
            // No fsync: a torn entry after a power cut fails its checksum and is rebuilt.
            drop(f);
            std::fs::rename(&temp, &path)
        };
        write().map_err(|source| {
            let _ = std::fs::remove_file(&temp);
            CacheError::Write { dir: self.dir.clone(), source }
        })
    }
}

/// The identity of a source file in the cache: its folder's canonical path joined with its
/// name, so two spellings of a folder share entries. (The folder is resolved once per run,
/// not once per file; a symlinked file keeps its own name, and its target's key.)
pub fn source_id(canonical_dir: &Path, file_name: &str) -> String {
    canonical_dir.join(file_name).to_string_lossy().into_owned()
}

/// The exact bytes an entry for this source version starts with.
fn header(path: &str, key: &SourceKey) -> Vec<u8> {
    let mut h = Vec::with_capacity(64 + path.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&key.len.to_le_bytes());
    h.extend_from_slice(&key.mtime.0.to_le_bytes());
    h.extend_from_slice(&key.mtime.1.to_le_bytes());
    h.extend_from_slice(&key.ctime.0.to_le_bytes());
    h.extend_from_slice(&key.ctime.1.to_le_bytes());
    h.extend_from_slice(&key.inode.to_le_bytes());
    put_bytes(&mut h, path.as_bytes());
    h
}

/// A 64-bit checksum against accidental damage (not an adversary): word-wise multiply-rotate.
fn checksum(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = 0xCBF2_9CE4_8422_2325u64 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    let mut w = [0u8; 8];
    w[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K);
    h ^ (h >> 32)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Encodes an entry: `header` then the payload.
pub fn encode(header: &[u8], call: &Compiled) -> Vec<u8> {
    let mut p = Vec::with_capacity(64 + call.steps.len() * 48);
    put_varint(&mut p, call.lines);
    put_varint(&mut p, call.utterances);
    match &call.queue_id {
        None => p.push(0),
        Some(q) => {
            p.push(1);
            put_bytes(&mut p, q.as_bytes());
        }
    }
    put_varint(&mut p, call.steps.len() as u64);
    let mut prev = 0i64;
    for (at, event) in &call.steps {
        put_varint(&mut p, zigzag(at.wrapping_sub(prev)));
        prev = *at;
        match event {
            Event::AgentConnected { at_ms } => {
                p.push(0);
                put_varint(&mut p, zigzag(*at_ms));
            }
            Event::ConversationEnded => p.push(1),
            Event::Sentiment { score } => {
                p.push(2);
                p.extend_from_slice(&score.to_bits().to_le_bytes());
            }
            Event::Utterance(u) => {
                p.push(3);
                let channel = match u.channel {
                    Channel::Customer => 0u8,
                    Channel::Agent => 1,
                    Channel::Other => 2,
                };
                let flags = u8::from(u.is_final)
                    | channel << 1
                    | u8::from(u.confidence.is_some()) << 3
                    | u8::from(u.utterance_id.is_some()) << 4;
                p.push(flags);
                if let Some(c) = u.confidence {
                    p.extend_from_slice(&c.to_bits().to_le_bytes());
                }
                put_bytes(&mut p, u.text.as_bytes());
                if let Some(id) = &u.utterance_id {
                    put_bytes(&mut p, id.as_bytes());
                }
            }
        }
    }
    let mut out = Vec::with_capacity(header.len() + 16 + p.len());
    out.extend_from_slice(header);
    out.extend_from_slice(&(p.len() as u64).to_le_bytes());
    out.extend_from_slice(&checksum(&p).to_le_bytes());
    out.extend_from_slice(&p);
    out
}

/// A bounds-checked cursor over a payload.
struct Reader<'a> {
    b: &'a [u8],
}

const TRUNCATED: CacheError = CacheError::Corrupt("truncated field");

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CacheError> {
        if n > self.b.len() {
            return Err(TRUNCATED);
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, CacheError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, CacheError> {
        let mut w = [0u8; 8];
        w.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(w))
    }

    fn varint(&mut self) -> Result<u64, CacheError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            v |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CacheError::Corrupt("varint too long"))
    }

    fn string(&mut self) -> Result<String, CacheError> {
        let n = usize::try_from(self.varint()?).map_err(|_| TRUNCATED)?;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| CacheError::Corrupt("text is not UTF-8"))
    }
}

/// Decodes an entry that must start with `header`.
pub fn decode(bytes: &[u8], header: &[u8]) -> Result<Compiled, CacheError> {
    let rest = bytes.strip_prefix(header).ok_or(CacheError::Corrupt("header differs: stale or foreign entry"))?;
    let mut r = Reader { b: rest };
    let len = usize::try_from(r.u64()?).map_err(|_| TRUNCATED)?;
    let sum = r.u64()?;
    if r.b.len() != len {
        return Err(CacheError::Corrupt("payload length differs"));
    }
    if checksum(r.b) != sum {
        return Err(CacheError::Corrupt("checksum differs"));
    }
    let lines = r.varint()?;
    let utterances = r.varint()?;
    let queue_id = match r.u8()? {
        0 => None,
        1 => Some(r.string()?),
        _ => return Err(CacheError::Corrupt("bad queue tag")),
    };
    let n = r.varint()?;
    // Every step takes at least two bytes: a count beyond that is damage, not a huge call.
    let cap = usize::try_from(n).ok().filter(|n| *n <= r.b.len() / 2).ok_or(TRUNCATED)?;
    let mut steps = Vec::with_capacity(cap);
    let mut at = 0i64;
    for _ in 0..n {
        at = at.wrapping_add(unzigzag(r.varint()?));
        let event = match r.u8()? {
            0 => Event::AgentConnected { at_ms: unzigzag(r.varint()?) },
            1 => Event::ConversationEnded,
            2 => Event::Sentiment { score: f64::from_bits(r.u64()?) },
            3 => {
                let flags = r.u8()?;
                let channel = match (flags >> 1) & 3 {
                    0 => Channel::Customer,
                    1 => Channel::Agent,
                    2 => Channel::Other,
                    _ => return Err(CacheError::Corrupt("bad channel")),
                };
                if flags >> 5 != 0 {
                    return Err(CacheError::Corrupt("bad utterance flags"));
                }
                let confidence = if flags & 8 != 0 { Some(f64::from_bits(r.u64()?)) } else { None };
                let text = r.string()?;
                let utterance_id = if flags & 16 != 0 { Some(r.string()?) } else { None };
                Event::Utterance(Utterance { is_final: flags & 1 != 0, channel, text, confidence, utterance_id })
            }
            _ => return Err(CacheError::Corrupt("bad event tag")),
        };
        steps.push((at, event));
    }
    if !r.b.is_empty() {
        return Err(CacheError::Corrupt("bytes after the last step"));
    }
    Ok(Compiled { queue_id, steps, utterances, lines })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Compiled {
        Compiled {
            queue_id: Some("q-1".into()),
            steps: vec![
                (1_741_594_000_000, Event::AgentConnected { at_ms: 1_741_593_999_000 }),
                (
                    1_741_594_000_500,
                    Event::Utterance(Utterance {
                        is_final: true,
                        channel: Channel::Customer,
                        text: "Ich möchte eine Rückerstattung".into(),
                        confidence: Some(0.87),
                        utterance_id: Some("u1".into()),
                    }),
                ),
                (
                    1_741_594_000_400,
                    Event::Utterance(Utterance {
                        is_final: false,
                        channel: Channel::Other,
                        text: String::new(),
                        confidence: None,
                        utterance_id: None,
                    }),
                ),
                (-5, Event::Sentiment { score: -0.47 }),
                (i64::MAX, Event::ConversationEnded),
            ],
            utterances: 2,
            lines: 9,
        }
    }

    const KEY: SourceKey = SourceKey { len: 10, mtime: (1, 2), ctime: (3, 4), inode: 5 };

    #[test]
    fn round_trip() {
        let h = header("/calls/a.jsonl", &KEY);
        let bytes = encode(&h, &sample());
        assert_eq!(decode(&bytes, &h).expect("decodes"), sample());
        let empty = Compiled { queue_id: None, steps: Vec::new(), utterances: 0, lines: 0 };
        assert_eq!(decode(&encode(&h, &empty), &h).expect("decodes"), empty);
    }

    #[test]
    fn another_version_path_or_format_is_a_miss() {
        let h = header("/calls/a.jsonl", &KEY);
        let bytes = encode(&h, &sample());
        for other in [
            header("/calls/b.jsonl", &KEY),
            header("/calls/a.jsonl", &SourceKey { len: 11, ..KEY }),
            header("/calls/a.jsonl", &SourceKey { mtime: (1, 3), ..KEY }),
            header("/calls/a.jsonl", &SourceKey { ctime: (4, 4), ..KEY }),
            header("/calls/a.jsonl", &SourceKey { inode: 6, ..KEY }),
        ] {
            assert!(matches!(decode(&bytes, &other), Err(CacheError::Corrupt(_))));
        }
        let mut old = bytes.clone();
        old[8] = old[8].wrapping_add(1); // the format version
        assert!(decode(&old, &h).is_err());
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_rejected_without_panic() {
        let h = header("/calls/a.jsonl", &KEY);
        let bytes = encode(&h, &sample());
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], &h).is_err(), "truncated to {n}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x5A;
            assert!(decode(&b, &h).is_err(), "byte {i} flipped");
        }
        // Garbage with a valid header and checksum still decodes to an error, not a panic.
        for seed in 0u64..200 {
            let junk: Vec<u8> = (0..64u64).map(|i| (seed.wrapping_mul(31).wrapping_add(i * 17) % 251) as u8).collect();
            let mut b = h.clone();
            b.extend_from_slice(&(junk.len() as u64).to_le_bytes());
            b.extend_from_slice(&checksum(&junk).to_le_bytes());
            b.extend_from_slice(&junk);
            let _ = decode(&b, &h);
        }
    }

    #[test]
    fn racy_only_on_whole_second_times_just_written() {
        let k = |s, ns| SourceKey { mtime: (s, ns), ..KEY };
        assert!(k(100, 0).is_racy(101));
        assert!(!k(100, 0).is_racy(102));
        assert!(!k(100, 5).is_racy(100));
    }
}
