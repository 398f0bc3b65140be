//! No import cycle between any two files of `src/`, siblings included.
//!
//! Reads the sources as text and builds the graph of which file uses which:
//! every path in code (`use` trees and paths written inline) that starts at
//! `crate::`, `super::`, `self::` or a child module is resolved to the file
//! that defines what it names, following re-exports (`pub use`) to the
//! file an item comes from; a file that re-exports an item uses that
//! item's file. `mod x;` declarations are structure, not uses, and a
//! file's `#[cfg(test)]` module is left out. Then every strongly
//! connected group of more than one file is a cycle, reported with the
//! uses that close it.
//!
//! The checker is run on a probe first (a small tree with a cycle through
//! a re-export), so a checker that finds nothing cannot pass for a clean
//! tree.

mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A module path: `["queue", "runner", "sql"]`; the crate root is `[]`.
type ModPath = Vec<String>;

/// One source tree: each module's file and text.
struct Tree {
    files: BTreeMap<ModPath, (PathBuf, String)>,
}

impl Tree {
    /// The library's modules under `src` (the binaries under `src/bin` are
    /// crates of their own and stand apart).
    fn read(src: &Path) -> Tree {
        let mut files = BTreeMap::new();
        for path in source::rust_files(src) {
            let rel = path.strip_prefix(src).unwrap();
            if rel.starts_with("bin") {
                continue;
            }
            let mut m: ModPath = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                m.pop();
            }
            let text = source::without_tests(&fs::read_to_string(&path).unwrap());
            files.insert(m, (rel.to_path_buf(), text));
        }
        Tree { files }
    }

    fn is_module(&self, path: &[String]) -> bool {
        self.files.contains_key(path)
    }

    /// The file a path names, read from module `from`: the module it ends
    /// in, or, for an item, the file that defines it (through
    /// re-exports). `None` for paths outside the crate.
    fn resolve(&self, from: &ModPath, path: &[String], depth: usize) -> Option<ModPath> {
        let (first, rest) = path.split_first()?;
        let mut cur: ModPath = match first.as_str() {
            "crate" => Vec::new(),
            "super" => from[..from.len().checked_sub(1)?].to_vec(),
            "self" => from.clone(),
            child => {
                let mut m = from.clone();
                m.push(child.to_owned());
                if !self.is_module(&m) {
                    return None;
                }
                m
            }
        };
        for seg in rest {
            match seg.as_str() {
                "super" => {
                    cur.pop();
                    continue;
                }
                "self" | "*" => continue,
                _ => {}
            }
            let mut next = cur.clone();
            next.push(seg.clone());
            if self.is_module(&next) {
                cur = next;
                continue;
            }
            // An item of `cur`: defined there, or re-exported from elsewhere.
            if depth < 16 {
                if let Some(target) = self.reexport(&cur, seg) {
                    return self.resolve(&cur, &target, depth + 1).or(Some(cur));
                }
            }
            return Some(cur);
        }
        Some(cur)
    }

    /// Where module `m` re-exports `name` from, if it does.
    fn reexport(&self, m: &ModPath, name: &str) -> Option<Vec<String>> {
        let (_, text) = self.files.get(m)?;
        for (public, path) in use_paths(text) {
            if !public {
                continue;
            }
            let last = path.last()?;
            let (source, alias) = match last.split_once(" as ") {
                Some((source, alias)) => (source, alias),
                None => (last.as_str(), last.as_str()),
            };
            if alias == name {
                let mut full = path[..path.len() - 1].to_vec();
                full.push(source.to_owned());
                return Some(full);
            }
        }
        None
    }

    /// Which files each file uses, and one line of each use, for the report.
    fn graph(&self) -> BTreeMap<ModPath, BTreeMap<ModPath, String>> {
        let mut graph = BTreeMap::new();
        for (m, (_, text)) in &self.files {
            let mut edges: BTreeMap<ModPath, String> = BTreeMap::new();
            let paths = use_paths(text)
                .into_iter()
                .map(|(_, p)| p)
                .chain(inline_paths(text));
            for path in paths {
                let mut path = path;
                if let Some(last) = path.last_mut() {
                    if let Some((source, _)) = last.split_once(" as ") {
                        *last = source.to_owned();
                    }
                }
                match self.resolve(m, &path, 0) {
                    Some(target) if &target != m => {
                        edges.entry(target).or_insert_with(|| path.join("::"));
                    }
                    _ => {}
                }
            }
            graph.insert(m.clone(), edges);
        }
        graph
    }

    /// The import cycles: each strongly connected group of two or more
    /// files, as lines `a -> b (path)`.
    fn cycles(&self) -> Vec<Vec<String>> {
        let graph = self.graph();
        let groups = strongly_connected(&graph);
        let name = |m: &ModPath| self.files[m].0.display().to_string();
        groups
            .into_iter()
            .filter(|g| g.len() > 1)
            .map(|group| {
                let mut lines = Vec::new();
                for a in &group {
                    for (b, path) in &graph[a] {
                        if group.contains(b) {
                            lines.push(format!("{} -> {} ({path})", name(a), name(b)));
                        }
                    }
                }
                lines
            })
            .collect()
    }
}

/// The paths of the `use` declarations in `text`, expanded (`a::{b, c::d}`
/// gives `a::b` and `a::c::d`), each with whether it is a re-export
/// (`pub use`, `pub(crate) use`, ...).
fn use_paths(text: &str) -> Vec<(bool, Vec<String>)> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = find_word(rest, 0, "use ") {
        let before = rest[..i].trim_end();
        // `pub`, `pub(crate)`, `pub(in a::b)` before it.
        let visibility = before
            .rfind([';', '{', '}', ']'])
            .map_or(before, |j| &before[j + 1..])
            .trim();
        let statement = visibility.is_empty() || visibility.starts_with("pub");
        let public = visibility.starts_with("pub");
        let body = &rest[i + 4..];
        let Some(end) = body.find(';') else { break };
        let tree: String = body[..end].split_whitespace().collect::<Vec<_>>().join(" ");
        let path_like = tree
            .chars()
            .all(|c| c.is_alphanumeric() || "_:{},* ".contains(c));
        if statement && path_like && !tree.is_empty() {
            for path in expand(&tree) {
                found.push((public, path));
            }
        }
        rest = &body[end..];
    }
    found
}

/// The first place at or after `from` where `word` starts `text` or
/// follows a character that cannot end a path (so `super::` inside
/// `super::super::` is not one).
fn find_word(text: &str, from: usize, word: &str) -> Option<usize> {
    let mut from = from;
    while let Some(i) = text[from..].find(word) {
        let at = from + i;
        let ok = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'));
        // `pub(in crate::queue)` names a module, it does not use it.
        if ok && !text[..at].ends_with("(in ") {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// Expands a use tree into its paths; the last segment may be `x as y`.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree = tree.trim().trim_start_matches("::");
    let Some(open) = tree.find('{') else {
        let segs: Vec<String> = tree
            .split("::")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        return if segs.is_empty() { vec![] } else { vec![segs] };
    };
    let prefix: Vec<String> = tree[..open]
        .split("::")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let close = tree.rfind('}').filter(|&c| c > open).unwrap_or(tree.len());
    let inner = &tree[open + 1..close];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    let mut out = Vec::new();
    for part in parts {
        if part.trim() == "self" {
            out.push(prefix.clone());
            continue;
        }
        for sub in expand(part) {
            let mut full = prefix.clone();
            full.extend(sub);
            out.push(full);
        }
    }
    out
}

/// Paths written in code outside `use` declarations that start at
/// `crate`, `super` or `self`: `super::store::release(...)`.
fn inline_paths(text: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for root in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = find_word(text, from, root) {
            let path: String = text[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            // `super::{a, b}` is a use tree, read by `use_paths`.
            if !path.ends_with("::") {
                let segs = path.split("::").map(str::to_owned).collect();
                found.push(segs);
            }
            from = at + root.len();
        }
    }
    found
}

/// Tarjan's strongly connected components.
fn strongly_connected(graph: &BTreeMap<ModPath, BTreeMap<ModPath, String>>) -> Vec<Vec<ModPath>> {
    struct State<'g> {
        graph: &'g BTreeMap<ModPath, BTreeMap<ModPath, String>>,
        index: BTreeMap<&'g ModPath, usize>,
        low: BTreeMap<&'g ModPath, usize>,
        stack: Vec<&'g ModPath>,
        on_stack: BTreeSet<&'g ModPath>,
        groups: Vec<Vec<ModPath>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g ModPath) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph[v].keys() {
            if !s.graph.contains_key(w) {
                continue;
            }
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                group.push(w.clone());
                if w == v {
                    break;
                }
            }
            s.groups.push(group);
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        groups: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.groups
}

/// Writes a probe tree: `a/mod.rs` re-exports `B` from `a/b.rs`, which
/// uses `super::Thing` defined in `a/mod.rs` (a cycle through a
/// re-export); `c.rs` and `d.rs` use each other inline; `e.rs` uses `a::b`
/// alone (no cycle).
fn probe(dir: &Path) {
    let files = [
        ("lib.rs", "mod a;\nmod c;\nmod d;\nmod e;\n"),
        ("a/mod.rs", "mod b;\npub use b::B;\npub struct Thing;\n"),
        ("a/b.rs", "use super::Thing;\npub struct B(Thing);\n"),
        ("c.rs", "pub fn c() { crate::d::d() }\n"),
        ("d.rs", "pub fn d() {}\npub fn again() { super::c::c() }\n"),
        (
            "e.rs",
            "use crate::a::{B, self};\n// use crate::e::nothing;\n",
        ),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
}

#[test]
fn the_checker_finds_the_probes_cycles() {
    let dir = std::env::temp_dir().join(format!("fork_safe-cycles-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    probe(&dir);
    let cycles = Tree::read(&dir).cycles();
    let _ = fs::remove_dir_all(&dir);
    let mut found: Vec<String> = cycles.iter().map(|c| c.join("; ")).collect();
    found.sort();
    assert_eq!(found.len(), 2, "two cycles in the probe: {found:#?}");
    assert!(found[0].contains("a/b.rs -> a/mod.rs") && found[0].contains("a/mod.rs -> a/b.rs"));
    assert!(found[1].contains("c.rs -> d.rs") && found[1].contains("d.rs -> c.rs"));
}

#[test]
fn no_two_files_of_src_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tree = Tree::read(&src);
    assert!(
        tree.files.len() > 50,
        "read only {} files",
        tree.files.len()
    );
    let edges: usize = tree.graph().values().map(BTreeMap::len).sum();
    assert!(edges > 100, "found only {edges} uses between files");
    let cycles = tree.cycles();
    let report: Vec<String> = cycles.iter().map(|c| c.join("\n  ")).collect();
    assert!(
        cycles.is_empty(),
        "{} import cycle(s) between files of src/:\n  {}",
        cycles.len(),
        report.join("\n\n  ")
    );
}
