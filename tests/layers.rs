//! The library's layers depend one way: this test reads every `crate::` path in src/ (outside
//! the CLI, which may use anything) and fails on a path that points up or sideways.
//!
//! The rule, as README's "Where things are" draws it: `proto` -> `wire`; `client` -> `proto`,
//! `wire`, `auth`; `services` -> `proto`, `wire`, `auth`, `metrics`; `server` -> `services`
//! and below. `text`, `source` and `stop` are leaf helpers (they import nothing of the crate)
//! that any layer may use; `fuzzing` modules are test hooks and may reach into what they exercise.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may name with `crate::`.
const ALLOWED: &[(&str, &[&str])] = &[
    ("text", &[]),
    ("source", &[]),
    ("stop", &[]),
    ("wire", &["text"]),
    ("proto", &["wire", "text"]),
    ("auth", &["wire", "text", "source"]),
    ("disk", &["proto", "wire", "text"]),
    ("fetch", &["text"]),
    ("metrics", &["wire", "proto", "text", "source"]),
    ("client", &["proto", "wire", "auth", "disk", "text", "source"]),
    (
        "services",
        &["proto", "wire", "auth", "metrics", "disk", "text", "source"],
    ),
    (
        "server",
        &[
            "services", "proto", "wire", "auth", "metrics", "disk", "text", "source", "stop",
        ],
    ),
];

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The top-level module a file under src/ belongs to (`src/services/chat/hub.rs` -> `services`).
fn top_module(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("a file under src/");
    let first = relative.components().next().expect("a path component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_owned()
}

/// Every `crate::NAME` a file's code names, comments left out.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                named.insert(name);
            }
        }
    }
    named
}

#[test]
fn every_layer_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut breaches = Vec::new();
    for file in &files {
        let module = top_module(&src, file);
        if matches!(module.as_str(), "cli" | "main" | "lib") {
            continue;
        }
        if file.file_stem().is_some_and(|stem| stem == "fuzzing") {
            continue;
        }
        let Some((_, allowed)) = ALLOWED.iter().find(|(name, _)| *name == module) else {
            breaches.push(format!(
                "{}: module `{module}` has no place in the layer list of tests/layers.rs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("a readable source file");
        for named in named_modules(&text) {
            if named != module && !allowed.contains(&named.as_str()) {
                breaches.push(format!(
                    "{}: `{module}` may not import `crate::{named}`",
                    file.display()
                ));
            }
        }
    }
    assert!(breaches.is_empty(), "layer rule broken:\n{}", breaches.join("\n"));
}

#[test]
fn the_checker_sees_imports_and_skips_comments() {
    let text = "use crate::wire::Header;\n// crate::server in a comment\nlet x = crate::text::escape(y);";
    let named: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(named, ["text", "wire"]);
}
