//! Errors of reading a GGUF file: one line each, naming the file, the problem, the key or
//! tensor and the byte offset, and what to do about it.

use std::fmt;

/// What went wrong, for callers (and tests) that branch on it; the message says the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The file could not be opened or mapped.
    Io,
    /// The file does not start with "GGUF".
    NotGguf,
    /// A GGUF file written for big-endian machines.
    BigEndian,
    /// A GGUF version other than 2 and 3.
    UnsupportedVersion,
    /// The file ends in the middle of something.
    Truncated,
    /// A count or length larger than the rest of the file could hold.
    ImplausibleSize,
    /// A key, string value or tensor name that is not UTF-8.
    InvalidUtf8,
    /// A value type number the format does not define.
    UnknownValueType,
    /// A value that is malformed in itself (a bool that is neither 0 nor 1, arrays nested too
    /// deep).
    InvalidValue,
    /// The same key twice.
    DuplicateKey,
    /// `general.alignment` that is not a non-zero power of two, or not a u32.
    BadAlignment,
    /// A tensor's shape: dimension count, a zero dimension, too many elements, a row that is
    /// not a whole number of blocks.
    BadShape,
    /// A tensor type llmhost does not know.
    UnknownTensorType,
    /// A tensor whose data is misaligned or lies (partly) outside the file.
    BadTensorOffset,
    /// Two tensors whose data overlap.
    OverlappingTensors,
    /// The same tensor name twice.
    DuplicateTensor,
    /// A metadata key that was asked for and is absent.
    MissingKey,
    /// A metadata key that was asked for and has another type.
    WrongType,
}

impl ErrorKind {
    /// What the user can do about it.
    pub fn hint(self) -> &'static str {
        const CORRUPT: &str =
            "the file is corrupted or was written by a broken tool; download or convert it again";
        match self {
            ErrorKind::Io => "check that the file exists and is readable",
            ErrorKind::NotGguf => "this is not a GGUF model file; pass a .gguf file",
            ErrorKind::BigEndian => {
                "big-endian GGUF files are not supported; use the little-endian file of the model"
            }
            ErrorKind::UnsupportedVersion => {
                "llmhost reads GGUF versions 2 and 3; convert the model again with a recent llama.cpp"
            }
            ErrorKind::Truncated => {
                "the file is truncated (an interrupted download or copy?); download it again"
            }
            ErrorKind::UnknownTensorType => {
                "llmhost does not support this tensor type; use a model quantized to F32, F16, \
                 BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 or a K-quant (Q2_K..Q6_K)"
            }
            ErrorKind::MissingKey | ErrorKind::WrongType => {
                "the file lacks metadata llmhost needs; convert the model again with a recent \
                 llama.cpp"
            }
            ErrorKind::ImplausibleSize
            | ErrorKind::InvalidUtf8
            | ErrorKind::UnknownValueType
            | ErrorKind::InvalidValue
            | ErrorKind::DuplicateKey
            | ErrorKind::BadAlignment
            | ErrorKind::BadShape
            | ErrorKind::BadTensorOffset
            | ErrorKind::OverlappingTensors
            | ErrorKind::DuplicateTensor => CORRUPT,
        }
    }
}

/// Where in the file's structure a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The header, or the file as a whole.
    File,
    /// A metadata key, by name (made printable).
    Key(String),
    /// A metadata entry whose key could not be read, by its 0-based index.
    KeyIndex(u64),
    /// A tensor, by name (made printable).
    Tensor(String),
    /// A tensor info whose name could not be read, by its 0-based index.
    TensorIndex(u64),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File => Ok(()),
            Location::Key(k) => write!(f, "key '{k}'"),
            Location::KeyIndex(i) => write!(f, "key #{i}"),
            Location::Tensor(t) => write!(f, "tensor '{t}'"),
            Location::TensorIndex(i) => write!(f, "tensor #{i}"),
        }
    }
}

/// An error reading a GGUF file. `Display` is one line:
/// `<file>: <what> (key 'x' / tensor 'y', at byte N): <what to do>`.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("{file}: cannot read the file: {io}: {hint}", hint = ErrorKind::Io.hint())]
    Io { file: String, io: std::io::Error },
    /// The file is not a valid GGUF file, or lacks what was asked of it.
    #[error("{file}: {what}{ctx}: {hint}", ctx = Context(.location, .offset), hint = .kind.hint())]
    Invalid {
        file: String,
        kind: ErrorKind,
        /// What is wrong, with the numbers involved.
        what: String,
        location: Location,
        /// The byte where the offending item starts (or where reading failed).
        offset: Option<u64>,
    },
}

impl GgufError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            GgufError::Io { .. } => ErrorKind::Io,
            GgufError::Invalid { kind, .. } => *kind,
        }
    }

    pub(crate) fn io(file: &str, io: std::io::Error) -> GgufError {
        GgufError::Io {
            file: printable(file),
            io,
        }
    }

    pub(crate) fn invalid(
        file: &str,
        kind: ErrorKind,
        what: impl Into<String>,
        location: Location,
        offset: Option<u64>,
    ) -> GgufError {
        GgufError::Invalid {
            file: printable(file),
            kind,
            what: single_line(what.into()),
            location,
            offset,
        }
    }
}

/// The " (key 'x', at byte N)" part of a message.
struct Context<'a>(&'a Location, &'a Option<u64>);

impl fmt::Display for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Location::File, None) => Ok(()),
            (Location::File, Some(n)) => write!(f, " (at byte {n})"),
            (loc, None) => write!(f, " ({loc})"),
            (loc, Some(n)) => write!(f, " ({loc}, at byte {n})"),
        }
    }
}

/// Longest name (key, tensor, file) quoted in a message, in characters.
const MAX_NAME_CHARS: usize = 96;

/// A name from the file, safe to put in a one-line message: control characters and quotes
/// escaped, overly long names cut.
pub(crate) fn printable(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX_NAME_CHARS {
            out.push_str("...");
            break;
        }
        if c.is_control() || c == '\'' || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Like [`printable`] for bytes that may not be UTF-8.
pub(crate) fn printable_bytes(b: &[u8]) -> String {
    let cut = &b[..b.len().min(MAX_NAME_CHARS * 4)];
    printable(&String::from_utf8_lossy(cut))
}

fn single_line(s: String) -> String {
    if s.contains(['\n', '\r']) {
        s.replace(['\n', '\r'], " ")
    } else {
        s
    }
}
