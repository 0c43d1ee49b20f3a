//! Imports point one way: commands → operator and Postfix service → fleet → pipeline →
//! logging and metrics → config → policy → DNS and kernel → the small helpers at the bottom.
//! This test reads the `crate::` paths of every source file (test code left out) and fails
//! on an import of a module at the same or a higher layer, which is what an import cycle
//! needs.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// The layers, bottom first; a module may use only modules of lower layers.
const LAYERS: &[&[&str]] = &[
    &["addr", "clock", "fault", "io", "tasks"],
    &["dns", "kernel"],
    &["policy"],
    &["config"],
    &["logging", "metrics"],
    &["pipeline"],
    &["fleet"],
    &["operator", "postfix"],
    &["cmd", "fuzzing"],
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` has no layer in LAYERS: add it"))
}

fn source_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("the source directory") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            source_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The top-level modules a piece of code names through `crate::`.
fn crate_modules(code: &str) -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::b, c, d::{e, f}}`: the first segment of each item at depth 1.
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => {
                        push_first_segment(&item, &mut modules);
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    push_first_segment(&item, &mut modules);
                    break;
                }
                if depth == 1 {
                    item.push(c);
                }
            }
        } else {
            push_first_segment(rest, &mut modules);
        }
    }
    modules
}

fn push_first_segment(path: &str, modules: &mut BTreeSet<String>) {
    let name: String = path
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if !name.is_empty() {
        modules.insert(name);
    }
}

/// The code of a file without its comments and its `#[cfg(test)]` part.
fn production_code(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn imports_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for path in &files {
        let relative = path.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        // The binary and the crate root only declare and dispatch.
        if module == "main" || module == "lib" {
            continue;
        }
        // Test-only files (declared under #[cfg(test)]).
        let name = relative.file_name().expect("a name").to_string_lossy();
        if name == "tests.rs" || name.ends_with("_tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(path).expect("a source file");
        for used in crate_modules(&production_code(&text)) {
            if used != module && layer_of(&used) >= layer_of(&module) {
                wrong.push(format!(
                    "{} (layer {}) uses crate::{used} (layer {})",
                    relative.display(),
                    layer_of(&module),
                    layer_of(&used)
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that point up or sideways:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_reader_sees_grouped_and_inline_paths() {
    let code = "use crate::{\n    config::{Action, Deployment},\n    metrics,\n    pipeline::{capture::{self, Limits}},\n};\nlet x = crate::clock::unix_now();";
    let found: Vec<String> = crate_modules(code).into_iter().collect();
    assert_eq!(found, ["clock", "config", "metrics", "pipeline"]);
}
