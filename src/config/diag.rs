//! Config problems and where they are: `FILE:LINE:COL: message`.

use std::fmt;
use std::path::{Path, PathBuf};

/// One config problem, printed as `FILE:LINE:COL: message` (or `FILE: message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diag {
    pub file: PathBuf,
    pub pos: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<Diag>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A byte span in the config text, resolved to line and column when reported.
pub type Span = std::ops::Range<usize>;

/// Where a setting was written (1-based line and column), kept in the validated config for the
/// problems found only when the setting is put to work: a file it names that cannot be read, a
/// key that does not parse, two routes that overlap.
///
/// A position is not part of a setting's identity: two settings equal in everything but where
/// they were written compare equal, so moving a table within the file does not rebuild (and
/// reconnect) what it configures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl PartialEq for Pos {
    fn eq(&self, _: &Pos) -> bool {
        true
    }
}

impl Eq for Pos {}

impl std::hash::Hash for Pos {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl Diag {
    /// A problem with the setting written at `pos` in `file`.
    pub fn at(file: &Path, pos: Pos, message: impl Into<String>) -> Diag {
        Diag { file: file.to_owned(), pos: Some((pos.line, pos.col)), message: message.into() }
    }
}

/// The problems found so far in one file, with the text their spans point into.
pub(super) struct Diags<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
    pub(super) list: Vec<Diag>,
}

impl<'a> Diags<'a> {
    pub(super) fn at(&mut self, span: &Span, message: impl Into<String>) {
        let pos = Some(line_col(self.text, span.start));
        self.list.push(Diag { file: self.file.to_owned(), pos, message: message.into() });
    }
    pub(super) fn whole(&mut self, message: impl Into<String>) {
        self.list.push(Diag { file: self.file.to_owned(), pos: None, message: message.into() });
    }
    /// How many problems were reported so far: a mark for [`Diags::clean_since`].
    pub(super) fn count(&self) -> usize {
        self.list.len()
    }
    /// True when no problem was reported since `mark` was taken with [`Diags::count`].
    pub(super) fn clean_since(&self, mark: usize) -> bool {
        self.list.len() == mark
    }
    /// The line and column where `span` starts.
    pub(super) fn pos(&self, span: &Span) -> Pos {
        let (line, col) = line_col(self.text, span.start);
        Pos { line, col }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..offset].chars().count() + 1;
    (line, col)
}
