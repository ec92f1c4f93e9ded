//! The library's architecture, checked from its own source: every module imports only from its
//! own layer or the layers below it, and no two files import each other, directly or through
//! others (docs/architecture.md, "Layers"). Test modules are left out: a test may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first, by top-level module.
const LAYERS: &[(&str, usize)] = &[
    ("error", 0),
    ("support", 0),
    ("model", 1),
    ("ports", 2),
    ("format", 3),
    ("services", 4),
    ("drivers", 5),
];

type Module = Vec<String>;

fn layer(module: &Module) -> Option<usize> {
    let top = module.first()?;
    LAYERS.iter().find(|(name, _)| name == top).map(|(_, l)| *l)
}

/// Every source file as its module path (`ports/store/mod.rs` -> `ports::store`).
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap().with_extension("");
                let mut module: Module = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if module.last().is_some_and(|l| l == "mod" || l == "lib") {
                    module.pop();
                }
                out.insert(module, path);
            }
        }
    }
    out
}

/// The code of a file without comments and without its test module.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands one `use` tree (`a::{b, c::{d}}`) into full paths.
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Module>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let mut head = prefix.to_vec();
        head.extend(segments(&tree[..open]));
        let inner = &tree[open + 1..tree.rfind('}').unwrap()];
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&head, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&head, &inner[start..], out);
    } else if !tree.is_empty() {
        let mut path = prefix.to_vec();
        path.extend(segments(tree.split(" as ").next().unwrap()));
        out.push(path);
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "self")
        .map(String::from)
        .collect()
}

/// Every `crate::` path a file names, in `use` statements and inline.
fn crate_paths(code: &str) -> Vec<Module> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let is_use = rest[..at].trim_end().ends_with("use");
        if is_use {
            let end = after.find(';').unwrap_or(after.len());
            expand(&[], &after[..end], &mut out);
            rest = &after[end..];
        } else {
            let end = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(after.len());
            out.push(segments(&after[..end]));
            rest = &after[end..];
        }
    }
    out
}

/// The file a path points into: its longest prefix that is a module.
fn resolve<'a>(modules: &'a BTreeMap<Module, PathBuf>, path: &[String]) -> Option<&'a Module> {
    (1..=path.len())
        .rev()
        .find_map(|n| modules.get_key_value(&path[..n]).map(|(k, _)| k))
}

fn imports() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    let mut graph = BTreeMap::new();
    for (module, path) in &modules {
        let targets: BTreeSet<Module> = crate_paths(&code(path))
            .iter()
            .filter_map(|p| resolve(&modules, p))
            .filter(|t| *t != module && !t.is_empty())
            .cloned()
            .collect();
        graph.insert(module.clone(), targets);
    }
    graph
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let graph = imports();
    assert!(graph.len() > 40, "the source tree was not found");
    let mut unknown = Vec::new();
    let mut upward = Vec::new();
    for (module, targets) in &graph {
        if module.is_empty() {
            continue;
        }
        let Some(from) = layer(module) else {
            unknown.push(module.join("::"));
            continue;
        };
        for target in targets {
            if layer(target).is_some_and(|to| to > from) {
                upward.push(format!("{} -> {}", module.join("::"), target.join("::")));
            }
        }
    }
    assert!(unknown.is_empty(), "modules in no layer: {unknown:?}");
    assert!(
        upward.is_empty(),
        "imports from a higher layer: {upward:#?}"
    );
}

#[test]
fn no_file_imports_itself_through_others() {
    let graph = imports();
    // A file is in a circle when it can reach itself.
    let mut circles = Vec::new();
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&Module> = graph[start].iter().collect();
        while let Some(next) = stack.pop() {
            if next == start {
                circles.push(start.join("::"));
                break;
            }
            if seen.insert(next) {
                stack.extend(graph.get(next).into_iter().flatten());
            }
        }
    }
    assert!(circles.is_empty(), "files in an import circle: {circles:?}");
}

#[test]
fn the_checker_sees_imports() {
    // The checks above would pass on a graph they failed to read; this one cannot.
    let graph = imports();
    let planner = graph
        .get(&segments("services::planner"))
        .expect("services/planner/mod.rs");
    assert!(planner.contains(&segments("model::task")), "{planner:?}");
    let paths = crate_paths("use crate::a::{b::C, d::{e, f::G as H}};\nlet x = crate::y::z::W;");
    assert_eq!(
        paths,
        vec![
            segments("a::b::C"),
            segments("a::d::e"),
            segments("a::d::f::G"),
            segments("y::z::W")
        ]
    );
}
