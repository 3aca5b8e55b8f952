//! The module map of `docs/architecture.md`, checked against the code: imports point down, from
//! the front (main, cli, http, demo, app) to the engine (sync, events, campaigns, relay,
//! providers, simulator, bounces) to the ground (store, source, mapping, config, domain, clock, db_tls,
//! process, progress), and no two top-level modules reach each other (no import cycles).
//!
//! It reads every file under `src/`, maps it to its top-level module (`src/sync/apply.rs` →
//! `sync`), and collects the paths that leave the module: `crate::x…`, `$crate::x…`, the groups of
//! `use crate::{a, b::{c, d}}`, and `super::…` chains that climb to the crate root (inline
//! `mod … { }` blocks counted). Comments, string literals (raw ones included) and char literals
//! are blanked first, so a doc comment or a message that names a module does not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layer {
    Front,
    Engine,
    Ground,
}

/// Every top-level module and its layer. `docs/architecture.md` has the same table (checked
/// below); a new module must be added to both.
const LAYERS: &[(&str, Layer)] = &[
    ("main", Layer::Front),
    ("cli", Layer::Front),
    ("http", Layer::Front),
    ("demo", Layer::Front),
    ("app", Layer::Front),
    ("sync", Layer::Engine),
    ("events", Layer::Engine),
    ("campaigns", Layer::Engine),
    ("relay", Layer::Engine),
    ("bounces", Layer::Engine),
    ("providers", Layer::Engine),
    ("simulator", Layer::Engine),
    ("retention", Layer::Engine),
    ("store", Layer::Ground),
    ("source", Layer::Ground),
    ("mapping", Layer::Ground),
    ("config", Layer::Ground),
    ("domain", Layer::Ground),
    ("clock", Layer::Ground),
    ("db_tls", Layer::Ground),
    ("process", Layer::Ground),
    ("progress", Layer::Ground),
];

/// Import cycles allowed for now. Issue 25 broke the last two (sync <-> events, mapping <->
/// source); the test fails when an entry is no longer needed, so the list stays honest.
const KNOWN: &[&[&str]] = &[];

fn layer_of(module: &str) -> Option<Layer> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

// ---------------------------------------------------------------------------------------------
// Reading Rust source well enough to find module paths.

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Ident(String),
    PathSep,
    Open,
    Close,
    Other(char),
}

/// Tokens with their 1-based line numbers; comments, strings and char literals are dropped.
fn tokenize(src: &str) -> Vec<(Tok, usize)> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '/' if at(i + 1) == '/' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if at(i + 1) == '*' => {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && at(i + 1) == '*' {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && at(i + 1) == '/' {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if chars[i] == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                }
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    if at(i) == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            '\'' => {
                // A char literal ('a', '\n', '\u{7f}', '"') or a lifetime ('a, 'static).
                if at(i + 1) == '\\' {
                    i += 3;
                    while i < chars.len() && chars[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else if at(i + 2) == '\'' {
                    i += 3;
                } else {
                    out.push((Tok::Other('\''), line));
                    i += 1;
                }
            }
            c if c.is_alphanumeric() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                // Raw strings: r"…", r#"…"#, br##"…"## (a raw identifier r#name is left alone).
                if matches!(word.as_str(), "r" | "br" | "cr") && matches!(at(i), '#' | '"') {
                    let mut hashes = 0;
                    while at(i + hashes) == '#' {
                        hashes += 1;
                    }
                    if at(i + hashes) == '"' {
                        i += hashes + 1;
                        loop {
                            if i >= chars.len() {
                                break;
                            }
                            if chars[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                                i += hashes + 1;
                                break;
                            }
                            if chars[i] == '\n' {
                                line += 1;
                            }
                            i += 1;
                        }
                        continue;
                    }
                }
                out.push((Tok::Ident(word), line));
            }
            ':' if at(i + 1) == ':' => {
                out.push((Tok::PathSep, line));
                i += 2;
            }
            '{' => {
                out.push((Tok::Open, line));
                i += 1;
            }
            '}' => {
                out.push((Tok::Close, line));
                i += 1;
            }
            c => {
                out.push((Tok::Other(c), line));
                i += 1;
            }
        }
    }
    out
}

/// The first segment of each path in the `{…}` group that starts at `toks[open]`, with its line.
fn group_heads(toks: &[(Tok, usize)], open: usize) -> Vec<(String, usize)> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    for (tok, line) in &toks[open..] {
        match tok {
            Tok::Open => {
                depth += 1;
                if depth == 1 {
                    expect_head = true;
                }
            }
            Tok::Close => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            Tok::Other(',') if depth == 1 => expect_head = true,
            Tok::Ident(name) if depth == 1 && expect_head => {
                heads.push((name.clone(), *line));
                expect_head = false;
            }
            _ if depth == 1 => expect_head = false,
            _ => {}
        }
    }
    heads
}

/// The names (with lines) that a file reaches at the crate root: `crate::NAME`, `$crate::NAME`,
/// `crate::{NAME, …}` and `super::…::NAME` climbing exactly to the root. `depth` is how deep the
/// file's module is (`src/sync.rs` and `src/sync/mod.rs`: 1, `src/sync/apply.rs`: 2).
fn root_references(src: &str, depth: usize) -> Vec<(String, usize)> {
    let toks = tokenize(src);
    let ident = |i: usize| match toks.get(i) {
        Some((Tok::Ident(s), _)) => Some(s.as_str()),
        _ => None,
    };
    let is = |i: usize, t: &Tok| toks.get(i).is_some_and(|(x, _)| x == t);
    let mut refs = Vec::new();
    let mut braces = 0usize;
    let mut inline_mods: Vec<usize> = Vec::new();
    let mut mod_opens_next = false;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Open => {
                braces += 1;
                if mod_opens_next {
                    inline_mods.push(braces);
                    mod_opens_next = false;
                }
            }
            Tok::Close => {
                if inline_mods.last() == Some(&braces) {
                    inline_mods.pop();
                }
                braces = braces.saturating_sub(1);
            }
            Tok::Ident(w) if w == "mod" && ident(i + 1).is_some() && is(i + 2, &Tok::Open) => {
                mod_opens_next = true;
            }
            Tok::Ident(w)
                if (w == "crate" || w == "super") && !is(i.wrapping_sub(1), &Tok::PathSep) =>
            {
                // Walk `super::super::…`; `crate` is the root itself.
                let mut j = i;
                let mut climbs = 0;
                let at_root = if w == "crate" {
                    j += 1;
                    true
                } else {
                    while ident(j) == Some("super") && is(j + 1, &Tok::PathSep) {
                        climbs += 1;
                        j += 2;
                    }
                    if climbs == 0 {
                        // `pub(super)`, `use super;`: not a path into another module.
                        i += 1;
                        continue;
                    }
                    j -= 1;
                    climbs == depth + inline_mods.len()
                };
                if at_root && is(j, &Tok::PathSep) {
                    match toks.get(j + 1) {
                        Some((Tok::Ident(name), line)) => refs.push((name.clone(), *line)),
                        Some((Tok::Open, _)) => refs.extend(group_heads(&toks, j + 1)),
                        _ => {}
                    }
                }
                i = j.max(i);
            }
            _ => {}
        }
        i += 1;
    }
    refs.retain(|(name, _)| name != "self" && name != "super");
    refs
}

// ---------------------------------------------------------------------------------------------
// The rules.

/// One reference from a top-level module to another: where it is written.
#[derive(Clone, Debug)]
struct Edge {
    from: String,
    to: String,
    file: String,
    line: usize,
}

/// `src/sync/apply.rs` → (`sync`, 2); `src/sync/mod.rs` and `src/sync.rs` → (`sync`, 1).
fn module_of(relative: &Path) -> (String, usize) {
    let parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let top = parts[0].trim_end_matches(".rs").to_owned();
    let last = parts.last().map(String::as_str).unwrap_or_default();
    let depth = if last == "mod.rs" {
        parts.len() - 1
    } else {
        parts.len()
    };
    (top, depth)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Every reference between two top-level modules, and the set of top-level modules in `src/`.
fn edges_of(src_dir: &Path) -> (Vec<Edge>, BTreeSet<String>) {
    let mut files = Vec::new();
    rust_files(src_dir, &mut files);
    let mut modules = BTreeSet::new();
    let mut raw = Vec::new();
    for path in &files {
        let relative = path.strip_prefix(src_dir).expect("under src/");
        let (module, depth) = module_of(relative);
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let shown = format!("src/{}", relative.display());
        for (to, line) in root_references(&text, depth) {
            raw.push((module.clone(), to, shown.clone(), line));
        }
        if module != "lib" {
            modules.insert(module);
        }
    }
    let edges = raw
        .into_iter()
        .filter(|(from, to, _, _)| from != to && modules.contains(to))
        .map(|(from, to, file, line)| Edge {
            from,
            to,
            file,
            line,
        })
        .collect();
    (edges, modules)
}

/// Groups of two or more modules that reach each other (strongly connected components).
fn cycles(edges: &[Edge]) -> Vec<BTreeSet<String>> {
    let names: BTreeSet<&str> = edges
        .iter()
        .flat_map(|e| [e.from.as_str(), e.to.as_str()])
        .collect();
    let names: Vec<&str> = names.into_iter().collect();
    let n = names.len();
    let index = |m: &str| names.iter().position(|x| *x == m).expect("a known module");
    let mut reach = vec![vec![false; n]; n];
    for e in edges {
        reach[index(&e.from)][index(&e.to)] = true;
    }
    for k in 0..n {
        for a in 0..n {
            for b in 0..n {
                if reach[a][k] && reach[k][b] {
                    reach[a][b] = true;
                }
            }
        }
    }
    let mut seen = vec![false; n];
    let mut out = Vec::new();
    for a in 0..n {
        if seen[a] || !reach[a][a] {
            continue;
        }
        let group: BTreeSet<String> = (0..n)
            .filter(|&b| reach[a][b] && reach[b][a])
            .map(|b| names[b].to_owned())
            .collect();
        for m in &group {
            seen[index(m)] = true;
        }
        if group.len() > 1 {
            out.push(group);
        }
    }
    out
}

/// The rule violations, each a line of text naming file and line, plus the known cycles found.
fn check(edges: &[Edge], modules: &BTreeSet<String>) -> (Vec<String>, Vec<BTreeSet<String>>) {
    let mut problems = Vec::new();
    for m in modules {
        if layer_of(m).is_none() {
            problems.push(format!(
                "src/{m}: a top-level module without a layer: add it to LAYERS in \
                 tests/architecture.rs and to the table in docs/architecture.md"
            ));
        }
    }
    for e in edges {
        let (Some(from), Some(to)) = (layer_of(&e.from), layer_of(&e.to)) else {
            continue;
        };
        let rule = match (from, to) {
            (Layer::Engine | Layer::Ground, Layer::Front) => "imports the front",
            (Layer::Ground, Layer::Engine) => "(ground) imports the engine",
            _ => continue,
        };
        problems.push(format!(
            "{}:{}: `{}` {rule}: `crate::{}`",
            e.file, e.line, e.from, e.to
        ));
    }
    let mut known_found = Vec::new();
    for group in cycles(edges) {
        let is_known = KNOWN
            .iter()
            .any(|k| k.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>() == group);
        if is_known {
            known_found.push(group);
            continue;
        }
        let mut first: BTreeMap<(&str, &str), &Edge> = BTreeMap::new();
        for e in edges {
            if group.contains(&e.from) && group.contains(&e.to) {
                first.entry((&e.from, &e.to)).or_insert(e);
            }
        }
        let detail: Vec<String> = first
            .values()
            .map(|e| format!("{} -> {} at {}:{}", e.from, e.to, e.file, e.line))
            .collect();
        let names: Vec<&str> = group.iter().map(String::as_str).collect();
        problems.push(format!(
            "import cycle between {}: {}",
            names.join(", "),
            detail.join("; ")
        ));
    }
    (problems, known_found)
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn imports_point_down_and_no_modules_reach_each_other() {
    let (edges, modules) = edges_of(&manifest_dir().join("src"));
    assert!(
        edges.len() > 20 && modules.contains("sync"),
        "the scan found too little to be right: {} edges in {modules:?}",
        edges.len()
    );
    let (mut problems, known_found) = check(&edges, &modules);
    for k in KNOWN {
        let k: BTreeSet<String> = k.iter().map(|s| s.to_string()).collect();
        if !known_found.contains(&k) {
            problems.push(format!(
                "KNOWN lists the cycle {k:?}, which is gone: delete it from KNOWN"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the module layers of docs/architecture.md are broken:\n{}",
        problems.join("\n")
    );
}

/// The layer table of `docs/architecture.md` (rows `` | `module` | layer | … ``) is `LAYERS`.
#[test]
fn the_documented_layer_table_is_the_one_checked() {
    let path = manifest_dir().join("docs/architecture.md");
    let doc = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut documented = BTreeSet::new();
    for row in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let layer = match cells.get(2).copied() {
            Some("front") => Layer::Front,
            Some("engine") => Layer::Engine,
            Some("ground") => Layer::Ground,
            _ => continue,
        };
        let name = cells[1]
            .trim_matches('`')
            .trim_end_matches('/')
            .trim_end_matches(".rs")
            .to_owned();
        documented.insert((name, format!("{layer:?}")));
    }
    let checked: BTreeSet<(String, String)> = LAYERS
        .iter()
        .map(|(m, l)| (m.to_string(), format!("{l:?}")))
        .collect();
    assert_eq!(
        documented, checked,
        "docs/architecture.md's layer table differs from LAYERS in tests/architecture.rs"
    );
}

// ---------------------------------------------------------------------------------------------
// The parser on small inputs.

fn names(src: &str, depth: usize) -> Vec<String> {
    root_references(src, depth)
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

#[test]
fn finds_plain_paths_with_their_lines() {
    let src = "use crate::store::Store;\nfn f() { crate::sync::run(); $crate::events::x }\n";
    assert_eq!(
        root_references(src, 1),
        [
            ("store".to_owned(), 1),
            ("sync".to_owned(), 2),
            ("events".to_owned(), 2)
        ]
    );
}

#[test]
fn finds_the_heads_of_use_groups_nested_or_not() {
    let src = "use crate::{\n    config::{Config, State},\n    http, self,\n    store::{self, Store}, sync::plan::{a, b::{c}},\n};";
    assert_eq!(
        root_references(src, 2),
        [
            ("config".to_owned(), 2),
            ("http".to_owned(), 3),
            ("store".to_owned(), 4),
            ("sync".to_owned(), 4)
        ]
    );
}

#[test]
fn ignores_comments_strings_and_char_literals() {
    let src = r###"
// use crate::http;
/// [`crate::cli::UsageError`]
/* crate::demo /* nested crate::app */ still comment crate::http */
let a = "crate::http::serve";
let b = r#"crate::cli "quoted" crate::http"#;
let c = b"crate::demo";
let d = '{'; let e = '"'; let f = '\'';
fn g<'a>(x: &'a str) -> &'a str { x }
use crate::store;
"###;
    assert_eq!(root_references(src, 1), [("store".to_owned(), 10)]);
}

#[test]
fn other_crates_and_local_paths_are_not_crate_references() {
    assert!(
        names(
            "use my_crate::http; use mailbridge_x::cli; pub(crate) fn f() {}",
            1
        )
        .is_empty()
    );
    assert!(names("use self::http::x; use sync::y;", 1).is_empty());
}

#[test]
fn super_counts_only_when_it_climbs_to_the_crate_root() {
    // src/sync/apply.rs (depth 2): super is sync, super::super is the root.
    assert_eq!(
        names("use super::diff; use super::super::events::pull;", 2),
        ["events"]
    );
    // src/cli.rs (depth 1): super is the root.
    assert_eq!(names("use super::{http, demo::run};", 1), ["http", "demo"]);
    // An inline module adds a level: in `mod tests` of src/simulator/mod.rs, super is simulator.
    let src = "mod tests {\n use super::campaigns;\n use super::super::http;\n}\nuse super::store;";
    assert_eq!(names(src, 1), ["http", "store"]);
}

#[test]
fn module_of_maps_files_to_their_top_level_module_and_depth() {
    assert_eq!(module_of(Path::new("cli.rs")), ("cli".to_owned(), 1));
    assert_eq!(module_of(Path::new("sync/mod.rs")), ("sync".to_owned(), 1));
    assert_eq!(
        module_of(Path::new("sync/apply.rs")),
        ("sync".to_owned(), 2)
    );
    assert_eq!(
        module_of(Path::new("providers/mailchimp/client/webhooks.rs")),
        ("providers".to_owned(), 4)
    );
}

#[test]
fn the_rules_catch_upward_imports_and_cycles() {
    let edge = |from: &str, to: &str, line| Edge {
        from: from.into(),
        to: to.into(),
        file: format!("src/{from}.rs"),
        line,
    };
    let modules: BTreeSet<String> = ["http", "relay", "store", "sync", "campaigns", "extra"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let edges = [
        edge("http", "relay", 1),     // front -> engine: fine
        edge("relay", "store", 2),    // engine -> ground: fine
        edge("relay", "http", 3),     // engine -> front
        edge("store", "http", 4),     // ground -> front
        edge("store", "relay", 5),    // ground -> engine
        edge("sync", "campaigns", 6), // engine -> engine, and back: a cycle
        edge("campaigns", "sync", 7),
    ];
    let (problems, known) = check(&edges, &modules);
    assert!(known.is_empty());
    let text = problems.join("\n");
    for expected in [
        "src/extra: a top-level module without a layer",
        "src/relay.rs:3: `relay` imports the front: `crate::http`",
        "src/store.rs:4: `store` imports the front: `crate::http`",
        "src/store.rs:5: `store` (ground) imports the engine: `crate::relay`",
        "import cycle between campaigns, sync: campaigns -> sync at src/campaigns.rs:7; sync -> campaigns at src/sync.rs:6",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // relay -> http -> relay would be a cycle too; so is relay -> store -> relay.
    assert!(
        text.contains("import cycle between http, relay, store"),
        "{text}"
    );
    assert_eq!(problems.len(), 6, "{text}");
}
