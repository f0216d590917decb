//! The house rules, checked: modules of `src/` only point down (no cycle between its folders),
//! and the files of `src/atlas/` read top-down (no cycle between them). Read from the `use`
//! paths of the sources (test modules left out), the way a reviewer would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without its `#[cfg(test)] mod tests` (tests may reach anywhere) and without
/// comment lines (a doc link to a higher layer is not a use of it).
fn production_code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text,
    };
    code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Every `prefix<ident>` in `text`: the module named right after the prefix.
fn named_after<'a>(text: &'a str, prefix: &'a str) -> impl Iterator<Item = String> + 'a {
    text.match_indices(prefix).map(move |(at, _)| {
        text[at + prefix.len()..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
    })
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// A cycle through `start`, if any, as the path that closes it.
fn cycle_from(graph: &Graph, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start.to_string());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

fn assert_acyclic(graph: &Graph, what: &str) {
    for node in graph.keys() {
        if let Some(cycle) = cycle_from(graph, node) {
            panic!("{what}: cycle {}", cycle.join(" -> "));
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn modules_of_src_only_point_down() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph = Graph::new();
    for file in &files {
        let relative = file.strip_prefix(src()).unwrap();
        let top = relative.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_string();
        for used in named_after(&production_code(file), "crate::") {
            if used != top && !used.is_empty() {
                graph.entry(top.clone()).or_default().insert(used);
            }
        }
    }
    assert!(graph.get("engine").is_some_and(|e| e.contains("reconcile")), "the walk found the uses: {graph:?}");
    assert_acyclic(&graph, "src/ folders");
    // The client knows HTTP and Atlas, nothing of decisions; the planner knows no IO.
    for (module, forbidden) in [("atlas", "reconcile"), ("atlas", "engine"), ("reconcile", "engine")] {
        assert!(!graph.get(module).is_some_and(|e| e.contains(forbidden)), "{module} must not use {forbidden}");
    }
}

#[test]
fn files_of_the_atlas_client_read_top_down() {
    let dir = src().join("atlas");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    let mut graph = Graph::new();
    for file in &files {
        let me = file.file_stem().unwrap().to_string_lossy().to_string();
        let code = production_code(file);
        for used in named_after(&code, "super::").chain(named_after(&code, "crate::atlas::")) {
            if used != me && !used.is_empty() {
                graph.entry(me.clone()).or_default().insert(used);
            }
        }
    }
    assert!(graph.get("client").is_some_and(|e| e.contains("error")), "the walk found the uses: {graph:?}");
    assert_acyclic(&graph, "src/atlas files");
}
