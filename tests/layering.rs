//! The crate's layering, checked from its source: a module imports only modules of
//! its own layer's module or of layers below it, the engine names no transport and
//! has no `unsafe` block, and `unsafe` code lives only where the crate root allows it.
//!
//! Layers, bottom up (`docs/design.md` says what each holds):
//!
//! ```text
//! types, wire → error → ring → sys → mem, notify → shared → backend → peer → engine → kv, testing
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of `src/` and its layer (equal numbers: siblings that must
/// not import each other).
const LAYERS: &[(&str, u32)] = &[
    ("types", 0),
    ("wire", 0),
    ("error", 1),
    ("ring", 2),
    ("sys", 3),
    ("mem", 4),
    ("notify", 4),
    ("shared", 5),
    ("backend", 6),
    ("peer", 7),
    ("engine", 8),
    ("kv", 9),
    ("cluster", 9),
    ("testing", 9),
];

/// Files that may hold `unsafe` code (`#![allow(unsafe_code)]` under the crate
/// root's `#![deny(unsafe_code)]`): the ring's internals, the transports' system
/// bindings, shared memory and the registry's raw memory.
const UNSAFE_ALLOWED: &[&str] = &[
    "ring/slot_ring.rs",
    "sys/",
    "backend/fabric/",
    "backend/cuda.rs",
    "backend/cuda_raw.rs",
    "backend/cuda_ipc.rs",
    "backend/cuda_vmm.rs",
    "backend/cuda_batch.rs",
    "backend/file.rs",
    "backend/local/",
    "notify.rs",
    "mem/mod.rs",
];

/// Names of transports' own types and modules that the engine must not use.
const TRANSPORT_NAMES: &[&str] = &[
    "Fabric",
    "Cuda",
    "Sim",
    "Local",
    "Files",
    "FileQueue",
    "FabricLink",
    "LocalLink",
];

/// Paths into transports' modules, and their cargo features, that the engine must
/// not use.
const TRANSPORT_PATHS: &[&str] = &[
    "backend::fabric",
    "backend::cuda",
    "backend::sim",
    "backend::local",
    "backend::file",
    "feature = \"cuda\"",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// (path relative to `src/`, code without comments) of every source file of the
/// library (not `bin/`).
fn library() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
            let text = std::fs::read_to_string(&p).expect("read source");
            let code: String = text
                .lines()
                .map(|l| match l.find("//") {
                    Some(i) => &l[..i],
                    None => l,
                })
                .collect::<Vec<_>>()
                .join("\n");
            (rel, code)
        })
        .filter(|(rel, _)| !rel.starts_with("bin/"))
        .collect()
}

/// The top-level module a file belongs to (`backend/fabric/send.rs` → `backend`).
fn module_of(rel: &str) -> &str {
    let first = rel.split('/').next().unwrap();
    first.strip_suffix(".rs").unwrap_or(first)
}

fn words(code: &str) -> impl Iterator<Item = &str> {
    code.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
}

/// Every `crate::<module>` a file names.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if rest.starts_with('{') {
            // `use crate::{a::X, b::Y}`: every first segment inside the braces.
            let end = rest.find('}').unwrap_or(rest.len());
            for part in rest[1..end].split(',') {
                let name = part.trim().split("::").next().unwrap_or("").trim();
                if !name.is_empty() {
                    out.push(name.to_owned());
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            out.push(name);
        }
    }
    out
}

#[test]
fn lower_layers_never_import_upper_ones() {
    let layer: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let mut violations = Vec::new();
    for (rel, code) in library() {
        let module = module_of(&rel);
        if module == "lib" {
            continue;
        }
        let Some(&own) = layer.get(module) else {
            violations.push(format!("{rel}: module `{module}` has no layer in tests/layering.rs"));
            continue;
        };
        for target in crate_paths(&code) {
            // Names re-exported at the crate root (`crate::Op`) are looked up by the
            // module that defines them; anything else unknown is a violation.
            let Some(&theirs) = layer.get(target.as_str()) else {
                violations.push(format!(
                    "{rel}: imports `crate::{target}`, which is not a layered module"
                ));
                continue;
            };
            if target != module && theirs >= own {
                violations.push(format!(
                    "{rel}: `{module}` (layer {own}) imports `crate::{target}` (layer {theirs})"
                ));
            }
        }
    }
    assert!(violations.is_empty(), "layering violations:\n{}", violations.join("\n"));
}

#[test]
fn the_engine_names_no_transport_and_has_no_unsafe_block() {
    let mut violations = Vec::new();
    for (rel, code) in library().into_iter().filter(|(rel, _)| rel.starts_with("engine/")) {
        // The one `Config` field that turns each transport on, and the stats field
        // that reports it (and its metrics), carry its name: they are the engine's public API.
        let api = rel == "engine/config.rs" || rel == "engine/stats.rs" || rel == "engine/metrics.rs";
        for w in words(&code).filter(|_| !api) {
            if TRANSPORT_NAMES.contains(&w) {
                violations.push(format!("{rel}: names `{w}`"));
            }
        }
        for p in TRANSPORT_PATHS.iter().filter(|p| !api && code.contains(*p)) {
            violations.push(format!("{rel}: names `{p}`"));
        }
        // `unsafe fn` declarations of the public API (the caller promises what the
        // memory is) are allowed; an `unsafe` block or impl is not.
        for (i, _) in code.match_indices("unsafe") {
            let after = &code[i + "unsafe".len()..];
            if after.starts_with('_') {
                continue; // `unsafe_code`, in the allow of such a declaration
            }
            if !after.trim_start().starts_with("fn ") {
                violations.push(format!("{rel}: an `unsafe` block or impl"));
            }
        }
    }
    assert!(violations.is_empty(), "engine/:\n{}", violations.join("\n"));
}

#[test]
fn unsafe_code_lives_only_where_it_is_allowed() {
    let root = library()
        .into_iter()
        .find(|(rel, _)| rel == "lib.rs")
        .expect("lib.rs")
        .1;
    assert!(
        root.contains("#![deny(unsafe_code"),
        "the crate root denies unsafe_code"
    );
    let mut violations = Vec::new();
    for (rel, code) in library() {
        let allowed = UNSAFE_ALLOWED.iter().any(|p| rel.starts_with(p));
        if code.contains("allow(unsafe_code)") && !allowed && !rel.starts_with("engine/") {
            violations.push(format!("{rel}: allows unsafe_code but is not in UNSAFE_ALLOWED"));
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
