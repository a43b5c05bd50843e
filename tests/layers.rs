//! The house's layers, read from the source: every file's imports (`use` trees and inline
//! `crate::`/`super::`/`self::` paths, test code and comments left out) must run one way
//! down. Two rules:
//!
//! - no circle between files: a module's `mod.rs` may use its children (and re-export them),
//!   but then no child may reach back into it; children reach their siblings directly;
//! - the top-level modules stand in one order ([`LAYERS`]), and nothing imports from a layer
//!   above its own.
//!
//! A failure names the files of the circle, or the import that runs upwards, and the path
//! that made the edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules, lowest first: each may import only from those before it (and
/// itself). `main.rs` is a crate of its own and is not read.
const LAYERS: &[&str] = &[
    "sys",
    "addr",
    "protocols",
    "error",
    "log",
    "net",
    "engine",
    "relay",
    "service",
    "bench",
    "cli",
];

/// The logging macros, exported at the crate root but defined in `log`.
const LOG_MACROS: &[&str] = &["debug", "info", "notice", "warn", "error", "limited"];

type Module = Vec<String>;

struct File {
    path: PathBuf,
    module: Module,
    is_dir_module: bool,
}

/// Every source file of the library with its module path; files of modules declared under
/// `#[cfg(test)]` are left out.
fn library_files(src: &Path) -> Vec<File> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(src, &mut paths);
    let mut files: Vec<File> = paths
        .into_iter()
        .filter(|p| p.file_name().unwrap() != "main.rs")
        .map(|path| {
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut module: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let is_dir_module = matches!(module.last().map(String::as_str), Some("mod" | "lib"));
            if is_dir_module {
                module.pop();
            }
            File {
                path,
                module,
                is_dir_module,
            }
        })
        .collect();
    // Modules declared `#[cfg(test)] mod name;` (or `pub mod`), by their full path.
    let mut test_only: BTreeSet<Module> = BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(&f.path).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for pair in lines.windows(2) {
            if pair[0] == "#[cfg(test)]" {
                let decl = pair[1]
                    .trim_start_matches("pub(crate) ")
                    .trim_start_matches("pub ");
                if let Some(name) = decl.strip_prefix("mod ").and_then(|d| d.strip_suffix(';')) {
                    test_only.insert(child_of(f, name));
                }
            }
        }
    }
    files.retain(|f| !test_only.iter().any(|t| f.module.starts_with(t)));
    files
}

/// The module path of `name` declared or named inside file `f`.
fn child_of(f: &File, name: &str) -> Module {
    let mut m = f.module.clone();
    m.push(name.to_string());
    m
}

/// The file's code without comments, and without inline `#[cfg(test)] mod name { ... }`
/// blocks.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    for line in text.lines() {
        let line = match line.find("//") {
            // A `//` inside a string literal ("http://...") keeps its line.
            Some(at) if line[..at].matches('"').count() % 2 == 0 => &line[..at],
            _ => line,
        };
        code.push_str(line);
        code.push('\n');
    }
    while let Some(at) = find_inline_test_module(&code) {
        let open = at + code[at..].find('{').unwrap();
        let mut depth = 0usize;
        let mut end = code.len();
        for (i, ch) in code[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        code.replace_range(at..end, "");
    }
    code
}

fn find_inline_test_module(code: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = code[from..].find("#[cfg(test)]") {
        let at = from + at;
        let rest = code[at + "#[cfg(test)]".len()..].trim_start();
        let rest = rest
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub ");
        if let Some(decl) = rest.strip_prefix("mod ") {
            let name_end = decl
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(decl.len());
            if decl[name_end..].trim_start().starts_with('{') {
                return Some(at);
            }
        }
        from = at + 1;
    }
    None
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`, with `as` renames) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap().trim();
        return vec![path.to_string()];
    };
    let prefix = &tree[..open];
    let Some(close) = tree.rfind('}').filter(|&c| c > open) else {
        return vec![prefix.trim_end_matches("::").to_string()];
    };
    let body = &tree[open + 1..close];
    let (mut items, mut depth, mut current) = (Vec::new(), 0, String::new());
    for ch in body.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(ch);
    }
    items.push(current);
    items
        .iter()
        .filter(|i| !i.trim().is_empty())
        .flat_map(|i| expand(i))
        .map(|p| format!("{prefix}{p}"))
        .collect()
}

/// The paths a file names: its `use` trees and the inline paths that start with `crate::`,
/// `super::`, `self::` or one of its own child modules.
fn paths_in(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    // `use` items: a line that starts one, up to its `;`.
    let mut at = 0;
    for line in code.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let item = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
            .iter()
            .find_map(|p| trimmed.strip_prefix(p));
        if item.is_some() {
            let start = at + line.find("use ").unwrap() + 4;
            let end = code[start..].find(';').map_or(code.len(), |e| start + e);
            let tree: String = code[start..end]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            paths.extend(expand(&tree));
        }
        at += line.len();
    }
    // Inline paths: runs of `word::word...` not preceded by `::` or a word character.
    let bytes = code.as_bytes();
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if is_word(bytes[i]) && (i == 0 || !(is_word(bytes[i - 1]) || bytes[i - 1] == b':')) {
            let start = i;
            let mut end = i;
            loop {
                while end < bytes.len() && is_word(bytes[end]) {
                    end += 1;
                }
                if code[end..].starts_with("::") && bytes.get(end + 2).is_some_and(|&b| is_word(b))
                {
                    end += 2;
                } else {
                    break;
                }
            }
            if code[start..end].contains("::") {
                paths.push(code[start..end].to_string());
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    paths
}

/// The module a path leads to (its longest prefix that is a module of the crate), resolved
/// from file `f`; `None` for paths outside the crate.
fn resolve(f: &File, path: &str, modules: &BTreeSet<Module>) -> Option<Module> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let (mut base, rest): (Module, &[&str]) = match segs.first()? {
        &"crate" => (Vec::new(), &segs[1..]),
        &"self" => (f.module.clone(), &segs[1..]),
        &"super" => {
            let mut base = f.module.clone();
            let mut i = 0;
            while segs.get(i) == Some(&"super") {
                base.pop();
                i += 1;
            }
            (base, &segs[i..])
        }
        first if modules.contains(&child_of(f, first)) => (f.module.clone(), &segs[..]),
        _ => return None,
    };
    if base.is_empty() && rest.len() == 1 && LOG_MACROS.contains(&rest[0]) {
        return Some(vec!["log".to_string()]);
    }
    let mut best = base.clone();
    for seg in rest {
        base.push(seg.to_string());
        if modules.contains(&base) {
            best = base.clone();
        } else {
            break;
        }
    }
    (!best.is_empty()).then_some(best)
}

/// The crate's import graph: module -> (module it imports -> the first path that does).
fn import_graph() -> BTreeMap<Module, BTreeMap<Module, String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = library_files(&src);
    let modules: BTreeSet<Module> = files.iter().map(|f| f.module.clone()).collect();
    let mut graph = BTreeMap::new();
    for f in &files {
        let _ = f.is_dir_module;
        let code = code_of(&std::fs::read_to_string(&f.path).unwrap());
        let mut edges: BTreeMap<Module, String> = BTreeMap::new();
        for path in paths_in(&code) {
            if let Some(to) = resolve(f, &path, &modules) {
                if to != f.module && !f.module.is_empty() {
                    edges.entry(to).or_insert(path);
                }
            }
        }
        graph.insert(f.module.clone(), edges);
    }
    graph
}

fn name(m: &Module) -> String {
    m.join("::")
}

/// The strongly connected components of more than one module (Tarjan).
fn circles(graph: &BTreeMap<Module, BTreeMap<Module, String>>) -> Vec<Vec<Module>> {
    struct State<'g> {
        graph: &'g BTreeMap<Module, BTreeMap<Module, String>>,
        index: BTreeMap<Module, usize>,
        low: BTreeMap<Module, usize>,
        stack: Vec<Module>,
        next: usize,
        found: Vec<Vec<Module>>,
    }
    fn visit(s: &mut State<'_>, v: &Module) {
        s.index.insert(v.clone(), s.next);
        s.low.insert(v.clone(), s.next);
        s.next += 1;
        s.stack.push(v.clone());
        let graph = s.graph;
        for w in graph[v].keys().filter(|w| graph.contains_key(*w)) {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v.clone(), low);
            } else if s.stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v.clone(), low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                let done = &w == v;
                component.push(w);
                if done {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_two_files_import_each_other_even_through_others() {
    let graph = import_graph();
    let found = circles(&graph);
    let mut report = String::new();
    for component in &found {
        report.push_str(&format!(
            "circle: {}\n",
            component.iter().map(name).collect::<Vec<_>>().join(", ")
        ));
        for v in component {
            for (w, path) in &graph[v] {
                if component.contains(w) {
                    report.push_str(&format!("  {} -> {} (`{path}`)\n", name(v), name(w)));
                }
            }
        }
    }
    assert!(found.is_empty(), "import circles:\n{report}");
}

#[test]
fn nothing_imports_from_a_layer_above_its_own() {
    let rank = |m: &Module| {
        LAYERS
            .iter()
            .position(|l| m.first().is_some_and(|f| f == l))
    };
    let mut upward = Vec::new();
    for (from, edges) in import_graph() {
        if from.is_empty() {
            continue; // lib.rs: the crate root declares the layers.
        }
        let Some(own) = rank(&from) else {
            upward.push(format!("{} is in no layer: add it to LAYERS", name(&from)));
            continue;
        };
        for (to, path) in edges {
            if rank(&to).is_some_and(|r| r > own) {
                upward.push(format!("{} -> {} (`{path}`)", name(&from), name(&to)));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that run upwards:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_reader_sees_use_trees_inline_paths_and_child_modules() {
    assert_eq!(
        expand("super::{a::B, c::{d, e as f}}"),
        ["super::a::B", "super::c::d", "super::c::e"]
    );
    let code = code_of(
        "use crate::net::x; // crate::engine::y\nfn f() { crate::sys::z(); lane::Lane::new(); }\n\
         #[cfg(test)]\nmod tests { use crate::bench::q; }\n",
    );
    let paths = paths_in(&code);
    assert!(paths.contains(&"crate::net::x".to_string()));
    assert!(paths.contains(&"crate::sys::z".to_string()));
    assert!(paths.contains(&"lane::Lane::new".to_string()));
    assert!(!code.contains("engine"), "comments are not imports");
    assert!(!code.contains("bench"), "test modules are not imports");
}
