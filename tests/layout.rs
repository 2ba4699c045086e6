//! The crates' layout, checked from their sources (no PostgreSQL): in the extension crate
//! (`src/`) and the core crate (`core/src/`), neither the capabilities (top-level modules) nor
//! the files within one capability's folder import each other in a cycle, and no file is
//! pulled in by a path attribute.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `.rs` files under `dir`, at any depth.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Rust source with comments, strings and character literals blanked out, so that only code
/// is searched.
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        let at = |j: usize| c.get(j).copied();
        if c[i] == '/' && at(i + 1) == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && at(i + 1) == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == Some('*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == Some('/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c[i] == 'r'
            && matches!(at(i + 1), Some('"' | '#'))
            && (!ident_before(&c, i) || c[i - 1] == 'b' && !ident_before(&c, i - 1))
        {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            while c.get(j) == Some(&'#') {
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            let hashes = j - i - 1;
            i = j + 1;
            while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|k| at(i + k) == Some('#'))) {
                i += 1;
            }
            i += 1 + hashes;
            out.push_str("\"\"");
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' && at(i + 1) == Some('\\') {
            // An escaped character literal: the quote, the backslash, the escaped character.
            i += 3;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if c[i] == '\'' && at(i + 2) == Some('\'') {
            i += 3;
            out.push_str("' '");
        } else {
            // Code, or a lifetime's quote.
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn ident_before(c: &[char], i: usize) -> bool {
    i > 0 && is_ident(c[i - 1])
}

/// The first-level names a piece of code takes from the crate root: `crate::a::b` and
/// `crate::{a, b::{self, C}}` give `a` and `b` (`$crate::` in macros is not this crate's).
fn crate_refs(code: &str) -> BTreeSet<String> {
    path_refs(code, "crate")
}

/// The first-level names a piece of code takes from `root` (`crate` or `super`).
fn path_refs(code: &str, root: &str) -> BTreeSet<String> {
    let c: Vec<char> = code.chars().collect();
    let mut refs = BTreeSet::new();
    let ident_at = |mut j: usize| {
        while c.get(j).is_some_and(|c| c.is_whitespace()) {
            j += 1;
        }
        let start = j;
        while c.get(j).is_some_and(|&c| is_ident(c)) {
            j += 1;
        }
        c[start..j].iter().collect::<String>()
    };
    let pattern: Vec<char> = root.chars().collect();
    let mut i = 0;
    while i + pattern.len() <= c.len() {
        if c[i..i + pattern.len()] != pattern[..]
            || (i > 0 && (is_ident(c[i - 1]) || c[i - 1] == '$'))
        {
            i += 1;
            continue;
        }
        let mut j = i + pattern.len();
        while c.get(j).is_some_and(|c| c.is_whitespace()) {
            j += 1;
        }
        if c.get(j) != Some(&':') || c.get(j + 1) != Some(&':') {
            i += 1;
            continue;
        }
        j += 2;
        while c.get(j).is_some_and(|c| c.is_whitespace()) {
            j += 1;
        }
        if c.get(j) == Some(&'{') {
            // A group: the first name of each entry at its top level.
            let mut depth = 0;
            let mut entry_start = true;
            while j < c.len() {
                match c[j] {
                    '{' => {
                        depth += 1;
                        if depth == 1 {
                            entry_start = true;
                        }
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => entry_start = true,
                    ch if depth == 1 && entry_start && is_ident(ch) => {
                        refs.insert(ident_at(j));
                        entry_start = false;
                    }
                    _ => {}
                }
                j += 1;
            }
        } else {
            refs.insert(ident_at(j));
        }
        i = j.max(i + 1);
    }
    refs.remove("");
    refs
}

/// The top-level modules of a crate's source folder (a file, or a folder with every file in
/// it) and their sources. The crate root declares every module and defines shared items
/// (`v1_function!`); those are not module edges.
fn top_modules(src: &Path) -> BTreeMap<String, String> {
    let mut sources = BTreeMap::new();
    for entry in fs::read_dir(src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display())) {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = if path.is_dir() {
            rust_files(&path)
                .iter()
                .map(|f| fs::read_to_string(f).unwrap())
                .collect::<Vec<_>>()
                .join("\n")
        } else if path.extension().is_some_and(|x| x == "rs") && name != "lib" {
            fs::read_to_string(&path).unwrap()
        } else {
            continue;
        };
        sources.insert(name, text);
    }
    sources
}

/// Each top-level module and the others it names.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    graph(&top_modules(src))
}

/// For each capability folder, its files (but `mod.rs`, the folder's own module) and the
/// siblings each names, as `super::x` or `crate::folder::x`.
fn folder_graphs(src: &Path) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(src).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let folder = dir.file_name().unwrap().to_string_lossy().into_owned();
        let own = format!("crate::{folder}::");
        let mut sources = BTreeMap::new();
        for f in fs::read_dir(&dir).unwrap() {
            let path = f.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.extension().is_some_and(|x| x == "rs") && name != "mod" {
                let code = code_only(&fs::read_to_string(&path).unwrap());
                sources.insert(name, code.replace(&own, "super::"));
            }
        }
        let g = sources
            .iter()
            .map(|(name, code)| {
                let uses = path_refs(code, "super")
                    .into_iter()
                    .filter(|m| m != name && sources.contains_key(m))
                    .collect();
                (name.clone(), uses)
            })
            .collect();
        out.insert(folder, g);
    }
    out
}

fn graph(sources: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    sources
        .iter()
        .map(|(name, text)| {
            let uses = crate_refs(&code_only(text))
                .into_iter()
                .filter(|m| m != name && sources.contains_key(m))
                .collect();
            (name.clone(), uses)
        })
        .collect()
}

/// A cycle of the graph (its modules in order, the first repeated at the end), if any.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        marks.insert(node, Mark::Open);
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next.as_str()).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let from = path.iter().position(|n| n == next).unwrap();
                    let mut cycle: Vec<String> =
                        path[from..].iter().map(|s| s.to_string()).collect();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, graph, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node.as_str()).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(cycle) = visit(node, graph, &mut marks, &mut vec![]) {
                return Some(cycle);
            }
        }
    }
    None
}

#[test]
fn modules_do_not_import_each_other_in_a_cycle() {
    for krate in ["src", "core/src"] {
        let dir = root().join(krate);
        let graph = module_graph(&dir);
        assert!(
            graph.len() > 5,
            "expected the crate's modules in {krate}/, found {:?}",
            graph.keys()
        );
        if let Some(cycle) = find_cycle(&graph) {
            panic!(
                "capabilities of {krate}/ import each other in a cycle: {}; move what they \
                 share to the module where it belongs",
                cycle.join(" -> ")
            );
        }
        for (folder, graph) in folder_graphs(&dir) {
            if let Some(cycle) = find_cycle(&graph) {
                panic!(
                    "files of {krate}/{folder}/ import each other in a cycle: {}",
                    cycle.join(" -> ")
                );
            }
        }
    }
}

#[test]
fn no_file_is_included_by_a_path_attribute() {
    // Spelled in two pieces so this file does not match itself.
    let attribute = ["#[", "path="].concat();
    let in_cfg_attr = ["cfg_attr(", ",path="].concat();
    let mut found = vec![];
    for dir in ["src", "core/src", "tests"] {
        for file in rust_files(&root().join(dir)) {
            let code: String = code_only(&fs::read_to_string(&file).unwrap())
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            if code.contains(&attribute) || code.contains(&in_cfg_attr) {
                found.push(file.strip_prefix(root()).unwrap().display().to_string());
            }
        }
    }
    assert!(
        found.is_empty(),
        "files pulled in by a path attribute (declare modules where they live): {found:?}"
    );
}

#[test]
fn the_checks_see_what_they_look_for() {
    let refs = crate_refs(&code_only(
        "use crate::{a, b::{self, C}, c as d};\n\
         use crate :: e::f;\n\
         let x = crate::g::h(); // crate::not_code\n\
         let s = \"crate::not_code\"; let q = '\"'; let r = r#\"crate::raw\"#;\n\
         let t = '\\''; let u = br\"crate::raw\"; crate::j();\n\
         let y = $crate::not_ours; fn k<'a>(v: &'a str) { crate::i(v) }\n\
         /* crate::not_code /* nested */ crate::not_code */",
    ));
    let expected: BTreeSet<String> = ["a", "b", "c", "e", "g", "i", "j"]
        .map(String::from)
        .into_iter()
        .collect();
    assert_eq!(refs, expected);

    let sources: BTreeMap<String, String> = [
        ("one", "use crate::two::X; use crate::outside::Y;"),
        ("two", "use crate::{three, one};"),
        ("three", "fn f() { crate::three::g() }"),
    ]
    .map(|(n, s)| (n.to_string(), s.to_string()))
    .into_iter()
    .collect();
    let g = graph(&sources);
    assert_eq!(
        find_cycle(&g),
        Some(vec!["one".into(), "two".into(), "one".into()])
    );
    let acyclic: BTreeMap<_, _> = g
        .into_iter()
        .map(|(n, mut uses)| {
            uses.remove("one");
            (n, uses)
        })
        .collect();
    assert_eq!(find_cycle(&acyclic), None);
}
