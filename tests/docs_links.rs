//! The documentation's links, read from the files: every relative link and `#anchor` in
//! README.md, CHANGELOG.md, `docs/*.md` and `perf/results/*.md` must name a file that exists and,
//! for an anchor, a heading of that file (GitHub's rule for heading ids: lower case, spaces to
//! `-`, punctuation other than `-` and `_` dropped, a repeated id numbered `-1`, `-2`, ...).
//! The documentation was one README and is now split over files, and text other branches add
//! is moved between them: a link that pointed into the old README breaks silently otherwise.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The Markdown files whose links are checked, relative to the repository root.
fn documents() -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    let mut files = vec![root.join("README.md"), root.join("CHANGELOG.md")];
    for dir in ["docs", "perf/results"] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

/// The lines of `text` outside fenced code blocks, with inline code spans blanked out.
fn prose_lines(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut out = String::new();
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
                out.push(' ');
            } else {
                out.push(if in_code { ' ' } else { c });
            }
        }
        lines.push(out);
    }
    lines
}

/// Every link target of a Markdown text: what stands between `](` and the next `)`.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose_lines(text) {
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            targets.push(rest[..end].trim().to_string());
            rest = &rest[end..];
        }
    }
    targets
}

/// GitHub's id for a heading's text.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The ids of every heading of a Markdown text, repeated ones numbered as GitHub numbers them.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let base = slug(&title.replace('`', ""));
        let mut id = base.clone();
        let mut n = 0;
        while ids.contains(&id) {
            n += 1;
            id = format!("{base}-{n}");
        }
        ids.insert(id);
    }
    ids
}

/// What is wrong with one link of `file`, if anything.
fn broken(file: &Path, target: &str) -> Option<String> {
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    };
    let dest = if path.is_empty() {
        file.to_path_buf()
    } else {
        file.parent().expect("a file's folder").join(path)
    };
    if !dest.exists() {
        return Some(format!("{target}: {} does not exist", dest.display()));
    }
    let anchor = anchor?;
    let text = std::fs::read_to_string(&dest).ok()?;
    let ids = anchors(&text);
    (!ids.contains(anchor)).then(|| format!("{target}: no heading #{anchor} in {}", dest.display()))
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in documents() {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        for target in link_targets(&text) {
            checked += 1;
            if let Some(problem) = broken(&file, &target) {
                problems.push(format!("{}: {problem}", file.display()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
    assert!(
        checked > 20,
        "only {checked} links found: is the parser reading the files?"
    );
}

#[test]
fn the_docs_split_keeps_readme_short_and_opening_with_its_two_commands() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("README.md");
    let lines = readme.lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines; at most 250 (the rest goes in docs/)"
    );
    let first_block: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect();
    assert!(
        first_block[0].starts_with("cargo run --release -- bench demo")
            && first_block[1].starts_with("cargo test "),
        "README opens with the bench demo and cargo test, got {first_block:?}"
    );
}

#[test]
fn a_missing_file_or_heading_is_reported_as_broken() {
    let readme = Path::new(ROOT).join("README.md");
    assert!(broken(&readme, "docs/manual.md#addresses").is_none());
    assert!(broken(&readme, "docs/manual.md#no-such-heading").is_some());
    assert!(broken(&readme, "docs/no-such-file.md").is_some());
    assert!(broken(&readme, "#no-such-heading").is_some());
    assert!(broken(&readme, "https://example.org/#x").is_none());
}

#[test]
fn heading_ids_follow_githubs_rule() {
    let ids = anchors("# Scale on 2 cores, and where (2026-11-26)\n## A\n### A\n```\n# no\n```\n");
    let want: BTreeSet<String> = ["scale-on-2-cores-and-where-2026-11-26", "a", "a-1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(ids, want);
    assert_eq!(
        link_targets("see [x](a.md#b) and `[y](not.md)` and ![p](p.png)"),
        ["a.md#b", "p.png"]
    );
}
