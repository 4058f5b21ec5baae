//! Layers only point down (ARCHITECTURE.md, "Layers"): every module of the
//! central and site crates sits on one floor, and may name a module of
//! its crate only on a floor below its own. Modules that share a floor do
//! not name each other either, so no import circle can form between them.
//!
//! The check reads the sources as text: every `crate::` path (a
//! `use crate::{a, b::c}` group counts each of its names) and every
//! `super::` path that climbs to the crate's root, with comments and string
//! literals taken out first. A name re-exported at the crate's root
//! (`pub use startup::Central`) counts as its module.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Central's floors, lowest first.
const CENTRAL: &[&[&str]] = &[
    &["config"],
    &["configuration_database"],
    &["authentication", "notification_outbox", "cluster"],
    &["site_call_audit"],
    &["communication"],
    &["health_monitoring", "operator_actions"],
    &["rest_api", "central_ui"],
    &["startup"],
];

/// The site's floors, lowest first.
const SITE: &[&[&str]] = &[
    &["store_and_forward"],
    &["external_system_gateway"],
    &["notification_service"],
    &["central_link", "site_runtime"],
    // `site.toml` gathers the settings types of the components below.
    &["admin_api", "config"],
    &["startup"],
];

fn crate_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src")
}

/// Every `.rs` file below `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text with comments, string and char literals blanked out (so that
/// a path in a doc comment or a message does not count).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').map_or(b.len(), |n| i + n);
            i = end;
        } else if rest.starts_with("/*") {
            let mut depth = 0;
            while i < b.len() {
                if text[i..].starts_with("/*") {
                    depth += 1;
                    i += 2;
                } else if text[i..].starts_with("*/") {
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
        } else if rest.starts_with("r#") || rest.starts_with("r\"") || rest.starts_with("br") {
            // A raw string: r"…", r#"…"#, br#"…"#.
            let start = rest.find(['"', '#']).unwrap_or(0);
            let hashes = rest[start..].bytes().take_while(|&c| c == b'#').count();
            let open = start + hashes;
            if rest.as_bytes().get(open) == Some(&b'"') && !prev_is_ident(text, i) {
                let close = format!("\"{}", "#".repeat(hashes));
                let end = rest[open + 1..]
                    .find(&close)
                    .map_or(b.len(), |n| i + open + 1 + n + close.len());
                i = end;
                out.push_str("\"\"");
            } else {
                out.push(b[i] as char);
                i += 1;
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            match rest[1..].find('\'') {
                Some(n) if n <= 10 && !rest[1..1 + n].contains(char::is_whitespace) => {
                    i += n + 2;
                    out.push_str("' '");
                }
                _ => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn prev_is_ident(text: &str, i: usize) -> bool {
    text[..i]
        .chars()
        .next_back()
        .is_some_and(|c| c.is_alphanumeric() || c == '_')
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first names of each item in a `{…}` group that starts at `s[0]`.
fn group_heads(s: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect = true;
    for (i, c) in s.char_indices() {
        match c {
            '{' => {
                depth += 1;
                expect = depth == 1;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => expect = true,
            c if expect && depth == 1 && (c.is_alphanumeric() || c == '_') => {
                heads.push(ident(&s[i..]).to_owned());
                expect = false;
            }
            _ => {}
        }
    }
    heads
}

/// The module path of a source file (`a/b/mod.rs` → [a, b]).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Root re-exports: name → module (`pub use startup::Central;`).
fn root_reexports(src: &Path) -> BTreeMap<String, String> {
    let lib = code_only(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut map = BTreeMap::new();
    for stmt in lib.split(';') {
        let stmt = stmt.trim();
        if let Some(path) = stmt.strip_prefix("pub use ") {
            let module = ident(path).to_owned();
            let last = path.rsplit("::").next().unwrap_or(path);
            let name = last.rsplit(" as ").next().unwrap_or(last).trim();
            map.insert(name.to_owned(), module);
        }
    }
    map
}

/// Every (file, top module it names) pair of a crate, outside its own
/// top module.
fn references(src: &Path) -> Vec<(PathBuf, String, String)> {
    let reexports = root_reexports(src);
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut out = Vec::new();
    for file in files {
        let path = module_path(src, &file);
        if path.first().is_none_or(|m| m == "lib") {
            continue;
        }
        let own = path[0].clone();
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        let mut named = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            if prev_is_ident(&code, at) {
                continue;
            }
            let rest = &code[at + "crate::".len()..];
            if rest.starts_with('{') {
                named.extend(group_heads(rest));
            } else {
                named.insert(ident(rest).to_owned());
            }
        }
        // `super::` chains that climb to the root.
        let mut i = 0;
        while let Some(n) = code[i..].find("super::") {
            let at = i + n;
            i = at + 7;
            if prev_is_ident(&code, at) || code[..at].ends_with("super::") {
                continue;
            }
            let mut climbs = 0;
            let mut rest = &code[at..];
            while let Some(r) = rest.strip_prefix("super::") {
                climbs += 1;
                rest = r;
            }
            if climbs >= path.len() {
                if rest.starts_with('{') {
                    named.extend(group_heads(rest));
                } else {
                    named.insert(ident(rest).to_owned());
                }
            }
        }
        for name in named {
            let module = reexports.get(&name).cloned().unwrap_or(name);
            if module != own && !module.is_empty() {
                out.push((file.clone(), own.clone(), module));
            }
        }
    }
    out
}

/// What points sideways or up in a crate, one line each.
fn violations(krate: &str, floors: &[&[&str]]) -> Vec<String> {
    let src = crate_src(krate);
    let floor_of = |m: &str| floors.iter().position(|f| f.contains(&m));
    let mut found = Vec::new();
    let mut files = Vec::new();
    sources(&src, &mut files);
    for file in &files {
        let path = module_path(&src, file);
        if let Some(top) = path.first().filter(|m| *m != "lib") {
            assert!(
                floor_of(top).is_some(),
                "{krate}: module {top} is on no floor: add it to this test and to ARCHITECTURE.md"
            );
        }
    }
    for (file, own, module) in references(&src) {
        let (Some(from), Some(to)) = (floor_of(&own), floor_of(&module)) else {
            continue; // an item of the root itself, or not a module
        };
        if to >= from {
            found.push(format!(
                "{}: {own} (floor {}) names {module} (floor {})",
                file.strip_prefix(&src).unwrap().display(),
                from + 1,
                to + 1
            ));
        }
    }
    found
}

#[test]
fn central_modules_only_import_from_floors_below() {
    let v = violations("central", CENTRAL);
    assert!(
        v.is_empty(),
        "imports that do not point down:\n{}",
        v.join("\n")
    );
}

#[test]
fn site_modules_only_import_from_floors_below() {
    let v = violations("site", SITE);
    assert!(
        v.is_empty(),
        "imports that do not point down:\n{}",
        v.join("\n")
    );
}

#[test]
fn the_check_reads_use_groups_and_skips_comments_and_strings() {
    let code = code_only("use crate::{a::{b, c}, d as e};\n// crate::f\nlet s = \"crate::g\";");
    assert!(!code.contains("crate::f") && !code.contains("crate::g"));
    let at = code.find("crate::").unwrap() + 7;
    assert_eq!(group_heads(&code[at..]), ["a", "d"]);
}
