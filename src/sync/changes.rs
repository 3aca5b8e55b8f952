//! The writes a real run plans, in the order planned, for the run to apply one at a time. A first
//! sync plans a write for every member: past [`IN_MEMORY`] changes, they all go to an anonymous
//! temporary file (one JSON record a line, written through a buffer) instead of the heap, so the
//! run's memory does not grow with the number of members it creates. The file has no name; the
//! OS removes it when it is closed, however the run ends.
//!
//! A write that fails while planning (a full disk) is kept and reported when the changes are
//! opened for reading, before any of them is applied; a record that cannot be read back stops
//! the run where it is (what was applied is committed, as after any interrupted run).

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};

use super::plan::Change;

/// Changes kept in memory; more go to a temporary file.
pub const IN_MEMORY: usize = 4096;

/// Buffer of the temporary file's reads and writes.
const BUFFER: usize = 64 * 1024;

/// The planned changes could not be kept or read back.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    #[error("cannot write the planned changes to a temporary file")]
    Write(#[source] io::Error),
    #[error("cannot read the planned changes back from their temporary file")]
    Read(#[source] io::Error),
    #[error("planned change {number} of {len} cannot be read back from its temporary file")]
    Decode {
        number: u64,
        len: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("the temporary file of planned changes ends after {read} of {len} changes")]
    Truncated { read: u64, len: u64 },
}

/// The changes of a plan, in order: in memory up to a limit, then in a temporary file.
pub struct Changes {
    len: u64,
    limit: usize,
    kept: Kept,
}

enum Kept {
    Memory(Vec<Change>),
    File(BufWriter<File>),
    /// A write failed: reported by [`Changes::read`].
    Failed(io::Error),
}

impl Default for Changes {
    fn default() -> Changes {
        Changes::with_limit(IN_MEMORY)
    }
}

impl fmt::Debug for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kept = match &self.kept {
            Kept::Memory(_) => "memory",
            Kept::File(_) => "file",
            Kept::Failed(_) => "failed",
        };
        f.debug_struct("Changes")
            .field("len", &self.len)
            .field("kept", &kept)
            .finish()
    }
}

impl Changes {
    fn with_limit(limit: usize) -> Changes {
        Changes {
            len: 0,
            limit,
            kept: Kept::Memory(Vec::new()),
        }
    }

    /// How many changes were planned (all counted, even after a failed write).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds the next change. Past the limit, the changes so far and every later one go to the
    /// file; an error there is kept for [`Changes::read`], and later changes are only counted.
    pub fn push(&mut self, change: Change) {
        self.len += 1;
        match &mut self.kept {
            Kept::Memory(changes) if changes.len() < self.limit => changes.push(change),
            Kept::Memory(changes) => {
                let before = std::mem::take(changes);
                self.kept = match spill(&before, &change) {
                    Ok(file) => Kept::File(file),
                    Err(e) => Kept::Failed(e),
                };
            }
            Kept::File(file) => {
                if let Err(e) = write(file, &change) {
                    self.kept = Kept::Failed(e);
                }
            }
            Kept::Failed(_) => {}
        }
    }

    /// The changes in the order they were pushed, read back one at a time. Fails if one could not
    /// be kept.
    pub fn read(self) -> Result<ChangeReader, ChangesError> {
        let from = match self.kept {
            Kept::Memory(changes) => Source::Memory(changes.into_iter()),
            Kept::Failed(e) => return Err(ChangesError::Write(e)),
            Kept::File(writer) => {
                let mut file = writer
                    .into_inner()
                    .map_err(|e| ChangesError::Write(e.into_error()))?;
                file.seek(SeekFrom::Start(0)).map_err(ChangesError::Read)?;
                Source::File {
                    reader: BufReader::with_capacity(BUFFER, file),
                    line: String::new(),
                }
            }
        };
        Ok(ChangeReader {
            from,
            len: self.len,
            read: 0,
        })
    }
}

/// A new temporary file with `before` and `change` in it.
fn spill(before: &[Change], change: &Change) -> io::Result<BufWriter<File>> {
    let mut file = BufWriter::with_capacity(BUFFER, tempfile::tempfile()?);
    for c in before {
        write(&mut file, c)?;
    }
    write(&mut file, change)?;
    Ok(file)
}

/// One record: the change as JSON on one line (JSON strings escape line breaks).
fn write(file: &mut BufWriter<File>, change: &Change) -> io::Result<()> {
    serde_json::to_writer(&mut *file, change)?;
    file.write_all(b"\n")
}

/// [`Changes`] read back, in order. It ends after the first error.
pub struct ChangeReader {
    from: Source,
    len: u64,
    read: u64,
}

enum Source {
    Memory(std::vec::IntoIter<Change>),
    File {
        reader: BufReader<File>,
        line: String,
    },
}

impl ChangeReader {
    /// How many changes there are in all (for the progress bar).
    pub fn total(&self) -> u64 {
        self.len
    }

    fn next_from_file(
        reader: &mut BufReader<File>,
        line: &mut String,
        read: u64,
        len: u64,
    ) -> Result<Change, ChangesError> {
        line.clear();
        match reader.read_line(line) {
            Err(e) => Err(ChangesError::Read(e)),
            Ok(0) => Err(ChangesError::Truncated { read, len }),
            Ok(_) => serde_json::from_str(line).map_err(|source| ChangesError::Decode {
                number: read + 1,
                len,
                source,
            }),
        }
    }
}

impl Iterator for ChangeReader {
    type Item = Result<Change, ChangesError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.read == self.len {
            return None;
        }
        let next = match &mut self.from {
            Source::Memory(changes) => changes.next().map(Ok)?,
            Source::File { reader, line } => {
                Self::next_from_file(reader, line, self.read, self.len)
            }
        };
        // After an error, nothing more: the changes after it cannot be trusted to be the next.
        self.read = if next.is_ok() {
            self.read + 1
        } else {
            self.len
        };
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::domain::WriteStatus;
    use crate::domain::{Email, MemberKey};
    use crate::mapping::{Contact, FieldValue};
    use crate::sync::plan::Push;

    /// 90.28571428571429: serde_json's default parser reads it back one unit off in the last place.
    const AWKWARD: f64 = 632.0 / 7.0;

    fn push(key: u32, create: bool, previous: Option<&str>, status: Option<WriteStatus>) -> Change {
        Change::Push(Push {
            contact: Contact {
                member_key: MemberKey::parse(&format!("M-{key}")).unwrap(),
                email: Email::parse(&format!("  Ann.{key}@Example.ORG ")).unwrap(),
                merge_fields: BTreeMap::from([
                    (
                        "FNAME".to_owned(),
                        FieldValue::Text("Ann \"the\"\nfirst".into()),
                    ),
                    ("AGE".to_owned(), FieldValue::Number(f64::from(key))),
                    ("SCORE".to_owned(), FieldValue::Number(AWKWARD)),
                    ("ZERO".to_owned(), FieldValue::Number(-0.0)),
                ]),
                tags: BTreeSet::from(["full".to_owned(), "é".to_owned()]),
            },
            create,
            previous_email: previous.map(str::to_owned),
            status,
        })
    }

    /// Every kind of change: creates, updates with and without a previous address, a pending
    /// contact (status `None`), archives.
    fn sample(n: u32) -> Vec<Change> {
        (0..n)
            .map(|i| match i % 5 {
                0 => push(i, true, None, Some(WriteStatus::Subscribed)),
                1 => push(i, false, Some("old@x.org"), Some(WriteStatus::Unsubscribed)),
                2 => push(i, false, None, None),
                3 => push(i, false, Some("Was@X.org"), Some(WriteStatus::Pending)),
                _ => Change::Archive {
                    member_key: MemberKey::from_int(i64::from(i)),
                    email: format!("gone.{i}@x.org"),
                },
            })
            .collect()
    }

    fn keep(limit: usize, changes: &[Change]) -> Changes {
        let mut kept = Changes::with_limit(limit);
        for c in changes {
            kept.push(c.clone());
        }
        kept
    }

    fn read_all(changes: Changes) -> Vec<Result<Change, ChangesError>> {
        changes.read().unwrap().collect()
    }

    #[test]
    fn up_to_the_limit_the_changes_stay_in_memory() {
        let all = sample(8);
        let kept = keep(8, &all);
        assert!(matches!(&kept.kept, Kept::Memory(v) if v.len() == 8));
        assert_eq!(kept.len(), 8);
        let reader = kept.read().unwrap();
        assert_eq!(reader.total(), 8);
        let back: Vec<Change> = reader.map(Result::unwrap).collect();
        assert_eq!(back, all);
    }

    #[test]
    fn past_the_limit_they_come_back_from_the_file_in_order_and_whole() {
        let all = sample(23);
        let kept = keep(4, &all);
        assert!(matches!(kept.kept, Kept::File(_)), "{kept:?}");
        assert_eq!(kept.len(), 23);
        let back: Vec<Change> = read_all(kept).into_iter().map(Result::unwrap).collect();
        assert_eq!(back, all);
        // Equal addresses compare by identity and numbers by value: check the rest exactly.
        for (b, a) in back.iter().zip(&all) {
            if let (Change::Push(b), Change::Push(a)) = (b, a) {
                assert_eq!(b.contact.email.original(), a.contact.email.original());
                let bits = |p: &Push| {
                    p.contact
                        .merge_fields
                        .values()
                        .map(|v| match v {
                            FieldValue::Number(n) => n.to_bits(),
                            FieldValue::Text(_) => 0,
                        })
                        .collect::<Vec<_>>()
                };
                assert_eq!(bits(b), bits(a));
                assert_eq!(b.contact.content_hash(), a.contact.content_hash());
            }
        }
    }

    #[test]
    fn an_empty_plan_reads_back_nothing() {
        let kept = Changes::default();
        assert!(kept.is_empty());
        assert!(read_all(kept).is_empty());
    }

    /// Overwrites the file's bytes at `at` (through the writer's file, as another process could).
    fn corrupt(kept: &mut Changes, at: u64, bytes: &[u8]) {
        let Kept::File(writer) = &mut kept.kept else {
            panic!("not spilled: {kept:?}");
        };
        writer.flush().unwrap();
        let file = writer.get_mut();
        file.seek(SeekFrom::Start(at)).unwrap();
        file.write_all(bytes).unwrap();
        file.seek(SeekFrom::End(0)).unwrap();
    }

    #[test]
    fn a_corrupted_record_is_an_error_that_ends_the_reading() {
        let all = sample(10);
        let mut kept = keep(2, &all);
        let second = serde_json::to_string(&all[0]).unwrap().len() as u64 + 1;
        corrupt(&mut kept, second, b"{]");
        let back = read_all(kept);
        assert_eq!(back.len(), 2, "{back:?}");
        assert_eq!(back[0].as_ref().unwrap(), &all[0]);
        let err = back[1].as_ref().unwrap_err();
        assert!(
            matches!(
                err,
                ChangesError::Decode {
                    number: 2,
                    len: 10,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "planned change 2 of 10 cannot be read back from its temporary file"
        );
    }

    #[test]
    fn a_file_that_ends_early_is_an_error() {
        let all = sample(6);
        let mut kept = keep(2, &all);
        let Kept::File(writer) = &mut kept.kept else {
            panic!("not spilled: {kept:?}");
        };
        writer.flush().unwrap();
        let two = all[..2]
            .iter()
            .map(|c| serde_json::to_string(c).unwrap().len() as u64 + 1)
            .sum();
        writer.get_mut().set_len(two).unwrap();
        let back = read_all(kept);
        assert_eq!(back.len(), 3, "{back:?}");
        assert!(matches!(
            back[2],
            Err(ChangesError::Truncated { read: 2, len: 6 })
        ));
    }

    #[test]
    fn a_failed_write_is_reported_before_any_change_is_read() {
        let all = sample(3);
        // A file open for reading only: the first write through it fails.
        let named = tempfile::NamedTempFile::new().unwrap();
        let read_only = File::open(named.path()).unwrap();
        let mut kept = Changes::with_limit(0);
        kept.kept = Kept::File(BufWriter::with_capacity(1, read_only));
        for c in &all {
            kept.push(c.clone());
        }
        assert!(matches!(kept.kept, Kept::Failed(_)), "{kept:?}");
        assert_eq!(kept.len(), 3, "every change is still counted");
        let err = kept.read().err().unwrap();
        assert!(matches!(err, ChangesError::Write(_)), "{err:?}");
    }
}
