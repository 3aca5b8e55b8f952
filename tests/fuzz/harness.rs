//! The fuzz harness: proptest over arbitrary bytes and over mutations of a committed seed corpus
//! (`tests/fixtures/fuzz/<target>/`). A target is a function from input bytes to
//! `Result<(), TestCaseError>` that asserts properties with `prop_assert!`; a panic is a failure too.
//!
//! Cases per target: `MAILBRIDGE_FUZZ_CASES` (default 256). Each run first replays every seed as it
//! is, then the seeds proptest saved from earlier failures (`proptest-regressions/fuzz/<target>.txt`),
//! then new cases. The smallest failing input is written to `target/tmp/fuzz-failures/` so it can be
//! committed as a `regression-*` seed.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{
    Config, FileFailurePersistence, TestCaseError, TestCaseResult, TestError, TestRunner,
};

/// Cases per target when `MAILBRIDGE_FUZZ_CASES` is not set: enough to catch the easy ones while
/// keeping `cargo test` quick.
const DEFAULT_CASES: u32 = 256;

/// Fragments a mutation may insert: the characters the decoders give meaning to, line breaks,
/// encoded-word and form/JSON syntax, and a few multi-byte and invisible characters.
pub const TOKENS: &[&str] = &[
    "$",
    "$$",
    "${",
    "}",
    "{",
    ":",
    "::",
    "'",
    "\"",
    "`",
    "\\",
    "\0",
    "=",
    "+",
    "@",
    "[",
    "]",
    "(",
    ")",
    ";",
    "?",
    "$1",
    ".",
    ",",
    "&",
    "%",
    "%5B",
    "-",
    "--",
    "/*",
    "*/",
    " ",
    "\t",
    "\r",
    "\n",
    "\r\n",
    "\r\n\r\n",
    "\r\nBcc: x@evil.example",
    "\nX-Injected: 1",
    "=?utf-8?b?",
    "?=",
    ":member_key",
    ":new_email",
    ":bogus",
    "${HOME}",
    "data[",
    "][",
    "data[merges][MBRKEY]=",
    "{\"",
    "\":",
    "[{",
    "}]",
    "null",
    "1e999",
    "-0",
    "é",
    "→",
    "\u{2028}",
    "\u{85}",
    "\u{feff}",
    "\u{fffd}",
    "\u{1F600}",
    "\x7f",
    "\x1b",
];

/// Cases per target, from `MAILBRIDGE_FUZZ_CASES`.
pub fn cases() -> u32 {
    std::env::var("MAILBRIDGE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target)
}

/// The seeds of `target`, sorted by file name: (file name, bytes).
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus {} cannot be read: {e}", dir.display()));
    let mut seeds: Vec<(String, Vec<u8>)> = entries
        .map(|e| {
            let path = e.expect("a corpus directory entry").path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("seed {} cannot be read: {e}", path.display()));
            (name, bytes)
        })
        .collect();
    seeds.sort();
    assert!(
        !seeds.is_empty(),
        "the corpus {} has no seeds",
        dir.display()
    );
    seeds
}

/// One edit of a seed. Positions are `Index`es so they fit any length and shrink toward 0.
#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    InsertToken(Index, Index),
    InsertRepeated(Index, Index, u16),
    Delete(Index, u8),
    Duplicate(Index, u8, u8),
    Truncate(Index),
    SpliceWith(Index, Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Mutation::InsertToken(i, t)),
        // Long runs of one token: deep nesting, long names, many pairs.
        1 => (any::<Index>(), any::<Index>(), 2u16..3000)
            .prop_map(|(i, t, n)| Mutation::InsertRepeated(i, t, n)),
        2 => (any::<Index>(), 1u8..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), 1u8..64, 1u8..8)
            .prop_map(|(i, n, k)| Mutation::Duplicate(i, n, k)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(i, s, j)| Mutation::SpliceWith(i, s, j)),
    ]
}

/// A position in `0..=len` (an insertion point).
fn point(i: &Index, len: usize) -> usize {
    i.index(len + 1)
}

/// Applies `mutations` to `input`; `seeds` is what splicing takes its second half from.
pub fn mutate(mut input: Vec<u8>, mutations: &[Mutation], seeds: &[Vec<u8>]) -> Vec<u8> {
    for m in mutations {
        let len = input.len();
        match m {
            Mutation::FlipBit(i, bit) if len > 0 => input[i.index(len)] ^= 1 << bit,
            Mutation::SetByte(i, b) if len > 0 => input[i.index(len)] = *b,
            Mutation::InsertToken(i, t) => {
                let at = point(i, len);
                let token = TOKENS[t.index(TOKENS.len())].as_bytes();
                input.splice(at..at, token.iter().copied());
            }
            Mutation::InsertRepeated(i, t, n) => {
                let at = point(i, len);
                let token = TOKENS[t.index(TOKENS.len())].as_bytes();
                let run = token.repeat(usize::from(*n));
                input.splice(at..at, run);
            }
            Mutation::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                let end = (at + usize::from(*n)).min(len);
                input.drain(at..end);
            }
            Mutation::Duplicate(i, n, times) if len > 0 => {
                let at = i.index(len);
                let end = (at + usize::from(*n)).min(len);
                let segment = input[at..end].repeat(usize::from(*times));
                input.splice(end..end, segment);
            }
            Mutation::Truncate(i) => input.truncate(point(i, len)),
            Mutation::SpliceWith(i, s, j) => {
                let other = &seeds[s.index(seeds.len())];
                let at = point(i, len);
                let from = point(j, other.len());
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    input
}

/// Inputs for a target with `seeds`: arbitrary bytes, arbitrary text, token soup, and (most often)
/// a seed with one to eight mutations.
pub fn input(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let seeds = std::sync::Arc::new(seeds);
    let pick = seeds.clone();
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..512),
        1 => any::<String>().prop_map(String::into_bytes),
        1 => prop::collection::vec(
            prop_oneof![
                prop::sample::select(TOKENS).prop_map(|t| t.as_bytes().to_vec()),
                "[a-zA-Z0-9_ .]{1,8}".prop_map(String::into_bytes),
            ],
            0..64,
        )
        .prop_map(|parts| parts.concat()),
        5 => (any::<Index>(), prop::collection::vec(mutation(), 1..8)).prop_map(
            move |(s, ms)| mutate(pick[s.index(pick.len())].clone(), &ms, &seeds)
        ),
    ]
}

/// Runs `check` on every seed of `target`, then on `cases()` generated inputs. Panics with the
/// smallest failing input (and writes its bytes under `target/tmp/fuzz-failures/`).
pub fn fuzz(target: &'static str, check: impl Fn(&[u8]) -> TestCaseResult) {
    fuzz_cases(target, cases(), check);
}

/// [`fuzz`] for a target whose every case writes to a database: a `share`-th of the cases (at
/// least the default), so the CI's long session stays within its time.
pub fn fuzz_costly(target: &'static str, share: u32, check: impl Fn(&[u8]) -> TestCaseResult) {
    let all = cases();
    fuzz_cases(
        target,
        (all / share.max(1)).max(all.min(DEFAULT_CASES)),
        check,
    );
}

fn fuzz_cases(target: &'static str, cases: u32, check: impl Fn(&[u8]) -> TestCaseResult) {
    let seeds = seeds(target);
    for (name, bytes) in &seeds {
        if let Err(e) = check(bytes) {
            panic!("{target}: seed {name} fails: {e}");
        }
    }
    let strategy = input(seeds.into_iter().map(|(_, b)| b).collect());
    run(
        target,
        cases,
        strategy,
        |bytes: Vec<u8>| check(&bytes),
        |bytes| (format!("b\"{}\"", bytes.escape_ascii()), bytes.clone()),
    );
}

/// Like [`fuzz`] with a strategy of the target's own (structured inputs); no corpus replay.
pub fn fuzz_with<S: Strategy>(
    target: &'static str,
    strategy: S,
    check: impl Fn(S::Value) -> TestCaseResult,
) where
    S::Value: std::fmt::Debug,
{
    run(target, cases(), strategy, check, |value| {
        let shown = format!("{value:#?}");
        let bytes = shown.clone().into_bytes();
        (shown, bytes)
    });
}

fn run<S: Strategy>(
    target: &'static str,
    cases: u32,
    strategy: S,
    check: impl Fn(S::Value) -> TestCaseResult,
    describe: impl Fn(&S::Value) -> (String, Vec<u8>),
) {
    let regressions: &'static str =
        Box::leak(format!("proptest-regressions/fuzz/{target}.txt").into_boxed_str());
    let config = Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    match runner.run(&strategy, check) {
        Ok(()) => {}
        Err(TestError::Fail(why, value)) => {
            let (shown, bytes) = describe(&value);
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
            let file = dir.join(format!("{target}.bin"));
            let saved = std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&file, &bytes))
                .map(|()| format!("written to {}", file.display()))
                .unwrap_or_else(|e| format!("not written: {e}"));
            panic!("{target}: {why}\nminimal input ({saved}):\n{shown}");
        }
        Err(TestError::Abort(why)) => panic!("{target}: aborted: {why}"),
    }
}

/// The bytes as text the way a decoder of text sees them (invalid UTF-8 replaced).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `Err(TestCaseError)` unless `cond`, for use in helpers outside `prop_assert!`'s reach.
pub fn ensure(cond: bool, why: impl FnOnce() -> String) -> TestCaseResult {
    if cond {
        Ok(())
    } else {
        Err(TestCaseError::fail(why()))
    }
}
