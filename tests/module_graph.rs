//! The crate's modules import each other one way: no cycle between modules, where a module is
//! a file under `src/` (`a/b.rs` and `a/b/mod.rs` are `a::b`) and an edge `m → n` is a
//! `crate::n…` or `super::…` path in `m`'s non-test code naming `n` or something inside it.
//! A module and its own ancestors or descendants are one unit (a parent declaring and
//! re-exporting its children is not a cycle). Found cycles are printed with their edges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`train::config`) → its file's text without comments and `#[cfg(test)]` code.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                parts.clear();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(parts.join("::"), strip(&text));
        }
    }
    out
}

/// The text without `//` comments and without everything from the first `#[cfg(test)]` on
/// (test modules sit at the end of our files).
fn strip(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths following `prefix` (`crate::`, `super::`) in `code`: `a::b::C` for
/// `crate::a::b::C`, and each item of a group (`crate::{a::X, b::{Y, Z}}` gives `a::X`, `b`).
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at + prefix.len()..];
        if before.is_some_and(ident) {
            rest = tail;
            continue;
        }
        let end = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
        let head = tail[..end].trim_end_matches(':');
        if tail[end..].starts_with('{') && (head.is_empty() || tail[..end].ends_with("::")) {
            // A group: its top-level items, each to its first `{` or space.
            let mut depth = 0;
            let mut item = String::new();
            let mut items = Vec::new();
            for c in tail[end..].chars() {
                match c {
                    '{' => {
                        depth += 1;
                        if depth > 1 {
                            item.push(c);
                        }
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            items.push(std::mem::take(&mut item));
                            break;
                        }
                        item.push(c);
                    }
                    ',' if depth == 1 => items.push(std::mem::take(&mut item)),
                    _ => item.push(c),
                }
            }
            for it in items {
                let it = it.trim();
                let name = it.split(['{', ' ']).next().unwrap_or_default();
                let name = name.trim_end_matches(':');
                if !name.is_empty() && name != "self" {
                    out.push(if head.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{head}::{name}")
                    });
                } else if name == "self" && !head.is_empty() {
                    out.push(head.to_owned());
                }
            }
        } else if !head.is_empty() {
            out.push(head.to_owned());
        }
        rest = &tail[end..];
    }
    out
}

/// The longest module that `path` starts with ("" when none).
fn resolve(path: &str, names: &BTreeSet<String>) -> String {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .map(|n| parts[..n].join("::"))
        .rfind(|m| names.contains(m))
        .unwrap_or_default()
}

fn related(a: &str, b: &str) -> bool {
    a.is_empty()
        || b.is_empty()
        || a == b
        || b.starts_with(&format!("{a}::"))
        || a.starts_with(&format!("{b}::"))
}

/// Module → the unrelated modules it names.
fn edges(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let names: BTreeSet<String> = mods.keys().cloned().collect();
    let mut out = BTreeMap::new();
    for (m, code) in mods {
        let here: Vec<&str> = if m.is_empty() {
            Vec::new()
        } else {
            m.split("::").collect()
        };
        let mut targets = BTreeSet::new();
        for p in paths_after(code, "crate::") {
            targets.insert(resolve(&p, &names));
        }
        for p in paths_after(code, "super::") {
            // `super::` is relative to the parent of the file's module (a `mod.rs` counts as
            // its folder's module, so its `super` is one level up too).
            let mut base: Vec<&str> = here[..here.len().saturating_sub(1)].to_vec();
            let mut p = p.as_str();
            while let Some(rest) = p.strip_prefix("super::") {
                base.pop();
                p = rest;
            }
            base.push(p);
            targets.insert(resolve(&base.join("::"), &names));
        }
        targets.retain(|t| !related(m, t));
        out.insert(m.clone(), targets);
    }
    out
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    comp.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    self.found.push(comp);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn the_module_graph_has_no_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    assert!(mods.len() > 50, "read {} modules from {src:?}", mods.len());
    let edges = edges(&mods);
    // The analysis sees real edges (a guard against a parser that finds nothing).
    assert!(edges["train::trainer"].contains("model"));
    assert!(edges["gui::classes_panel"].contains("openimages::catalogue"));
    let found = cycles(&edges);
    let report: Vec<String> = found
        .iter()
        .map(|comp| {
            let inside: Vec<String> = comp
                .iter()
                .flat_map(|a| {
                    edges[a]
                        .iter()
                        .filter(|b| comp.contains(b))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            format!("{comp:?}: {}", inside.join(", "))
        })
        .collect();
    assert!(found.is_empty(), "import cycles:\n{}", report.join("\n"));
}

#[test]
fn a_planted_cycle_is_found() {
    let mods: BTreeMap<String, String> = [
        ("a", "use crate::b::X;"),
        ("b", "use crate::c::Y; // crate::a::Z in a comment"),
        ("c", "pub fn f() { crate::a::g() }"),
        ("d", "use super::a;"),
        ("d::e", "use super::super::d; use super::{f::F, super::a};"),
        ("d::f", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), strip(v)))
    .collect();
    let edges = edges(&mods);
    assert_eq!(cycles(&edges), vec![vec!["a", "b", "c"]]);
    assert!(edges["d"].contains("a"));
    // A child naming its parent is not an edge; a sibling and a group's items are.
    let want: BTreeSet<String> = ["a", "d::f"].map(str::to_owned).into();
    assert_eq!(edges["d::e"], want);
}
