//! One direction of dependencies: every module of `src/` imports only modules on a lower layer
//! (the table below, the same picture as the crate doc in src/lib.rs), and no two files of one
//! module import each other, directly or round a cycle.
//!
//! An import is any `crate::NAME` path (in `use`, in a type or in an expression) and every first
//! segment of a `use crate::{…}` group, outside comments and outside the `#[cfg(test)] mod tests`
//! block at the end of a file (unit tests may look anywhere). Within a module, a file's imports of
//! its siblings are its `super::NAME` and `crate::MODULE::NAME` paths; the module's `mod.rs` is its
//! façade (it declares and re-exports its files) and is not checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may import modules of lower layers only.
const LAYERS: &[&[&str]] = &[
    &["error", "paths", "progress"],
    &["stats"],
    &["stimulus"],
    &["lm"],
    &["store"],
    &["sae"],
    &["features"],
    &["encoding"],
    &["taxonomy", "topography"],
    &["reading"],
    &["config"],
    &["stages"],
    &["dataflow"],
    &["report"],
    &["outputs"],
    &["pipeline"],
    &["cli"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules of `src` (a file's stem or a folder's name), without lib.rs and main.rs.
fn modules(src: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            out.insert(name);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            if stem != "lib" && stem != "main" {
                out.insert(stem.to_string());
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments and without its unit-test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            // a `//` inside a string literal ("http://…") is rare in this code base and cuts off
            // only the rest of that line
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The first segments of the paths after every `prefix` (e.g. "crate::", "super::"), including
/// each first segment of a `prefix{a::b, c}` group.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `my_crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            // a use group: first segments at depth 1
            let (mut depth, mut at_start) = (1usize, true);
            let mut chars = group.char_indices();
            while let Some((j, c)) = chars.next() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => at_start = true,
                    c if at_start && depth == 1 && (c.is_alphabetic() || c == '_') => {
                        out.push(ident_at(&group[j..]).to_string());
                        at_start = false;
                    }
                    c if c.is_whitespace() => {}
                    _ => at_start = false,
                }
            }
        } else {
            let id = ident_at(rest);
            if !id.is_empty() {
                out.push(id.to_string());
            }
        }
    }
    out
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// (importing module, imported module) → the files where it happens.
fn module_edges(src: &Path) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mods = modules(src);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap().to_string_lossy().to_string();
        let me = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
        if !mods.contains(&me) {
            continue;
        }
        let text = code(&std::fs::read_to_string(&f).unwrap());
        for m in paths_after(&text, "crate::") {
            if m != me && mods.contains(&m) {
                edges.entry((me.clone(), m)).or_default().insert(rel.clone());
            }
        }
    }
    edges
}

/// The upward or sideways imports among `src`'s modules: "a → b (files)" lines.
fn violations(src: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for ((a, b), files) in module_edges(src) {
        match (layer_of(&a), layer_of(&b)) {
            (Some(la), Some(lb)) if lb < la => {}
            (Some(la), Some(lb)) => out.push(format!(
                "{a} (layer {la}) imports {b} (layer {lb}, not below it) in {}",
                files.into_iter().collect::<Vec<_>>().join(", ")
            )),
            _ => {} // unplaced modules are reported by their own test
        }
    }
    out
}

/// Cycles among the files of each module folder (strongly connected components of size > 1).
fn file_cycles(src: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for module in modules(src) {
        let dir = src.join(&module);
        if !dir.is_dir() {
            continue;
        }
        let siblings: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let p = e.unwrap().path();
                let n = p.file_name().unwrap().to_string_lossy().to_string();
                if p.is_dir() {
                    Some(n)
                } else {
                    n.strip_suffix(".rs").filter(|s| *s != "mod").map(String::from)
                }
            })
            .collect();
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in &siblings {
            let p = if dir.join(s).is_dir() {
                dir.join(s).join("mod.rs")
            } else {
                dir.join(format!("{s}.rs"))
            };
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            let text = code(&text);
            let mut targets: Vec<String> = paths_after(&text, "super::");
            targets.extend(paths_after(&text, &format!("crate::{module}::")));
            for t in targets {
                if &t != s && siblings.contains(&t) {
                    edges.entry(s.clone()).or_default().insert(t);
                }
            }
        }
        for comp in strongly_connected(&siblings, &edges) {
            out.push(format!("{module}: {}", comp.join(" ↔ ")));
        }
    }
    out
}

/// Tarjan's strongly connected components of size > 1.
fn strongly_connected(nodes: &BTreeSet<String>, edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(v: &'a str, s: &mut State<'a>) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on.insert(v);
        let edges = s.edges;
        for w in edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(w, s);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in nodes {
        if !s.index.contains_key(v.as_str()) {
            visit(v, &mut s);
        }
    }
    s.out
}

#[test]
fn every_module_imports_only_modules_on_lower_layers() {
    let v = violations(&src());
    assert!(
        v.is_empty(),
        "imports against the layering (tests/it/layering.rs, src/lib.rs):\n  {}",
        v.join("\n  ")
    );
}

#[test]
fn no_two_files_of_a_module_import_each_other() {
    let c = file_cycles(&src());
    assert!(
        c.is_empty(),
        "import cycles between the files of a module:\n  {}",
        c.join("\n  ")
    );
}

#[test]
fn every_module_has_a_layer_and_a_doc_saying_what_it_may_import() {
    let src = src();
    let mut problems = Vec::new();
    for m in modules(&src) {
        if layer_of(&m).is_none() {
            problems.push(format!("module `{m}` is in no layer of tests/it/layering.rs"));
        }
        let file = if src.join(&m).is_dir() {
            src.join(&m).join("mod.rs")
        } else {
            src.join(format!("{m}.rs"))
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let doc: String = text
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        if !doc.contains("May import") {
            problems.push(format!(
                "{}: its module doc does not say what it may import",
                file.display()
            ));
        }
    }
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let mut last = 0;
    for layer in LAYERS {
        for m in *layer {
            match lib.find(&format!("`{m}`")) {
                Some(i) if i >= last => last = i,
                Some(_) => problems.push(format!("src/lib.rs names `{m}` out of layer order")),
                None => problems.push(format!("src/lib.rs does not name `{m}` in its module picture")),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The checker itself: a planted upward import, a planted use group and a planted file cycle are
/// found (so the tests above cannot pass by finding nothing).
#[test]
fn the_checker_finds_planted_back_imports_and_cycles() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path();
    std::fs::create_dir_all(src.join("stats")).unwrap();
    std::fs::create_dir_all(src.join("sae")).unwrap();
    std::fs::write(src.join("error.rs"), "//! May import: nothing.\n").unwrap();
    std::fs::write(
        src.join("stats/mod.rs"),
        "//! May import: error.\nuse crate::error::Error;\n// crate::pipeline in a comment is no import\n",
    )
    .unwrap();
    std::fs::write(src.join("paths.rs"), "use crate::{Error, stats::pearson};\n").unwrap();
    std::fs::write(src.join("sae/mod.rs"), "pub mod io;\npub mod train;\n").unwrap();
    std::fs::write(src.join("sae/io.rs"), "use super::train::SaeTrainConfig;\n").unwrap();
    std::fs::write(
        src.join("sae/train.rs"),
        "fn f() { crate::sae::io::save(); }\n#[cfg(test)]\nmod tests {\n    use crate::cli;\n}\n",
    )
    .unwrap();
    let v = violations(src);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].starts_with("paths (layer 0) imports stats (layer 1"), "{v:?}");
    assert_eq!(file_cycles(src), vec!["sae: io ↔ train".to_string()]);
    let edges = module_edges(src);
    assert!(edges.contains_key(&("stats".into(), "error".into())));
    assert!(!edges.keys().any(|(_, b)| b == "pipeline" || b == "cli"), "{edges:?}");
}
