//! The README's configuration reference cannot drift from the code: each of
//! its two blocks (site.toml, central.toml) must parse with the real
//! configuration types (which refuse unknown keys), and must set every key
//! those types have (the parsed configuration, written back out with its
//! defaults filled in, has exactly the keys of the block).

use std::collections::BTreeSet;

use sitelink_central::CentralConfig;
use sitelink_site::SiteConfig;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap()
}

/// The TOML block that follows `<!-- reference: NAME -->`.
fn block(readme: &str, name: &str) -> String {
    let marker = format!("<!-- reference: {name} -->");
    let after = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("no {marker} in the README"))
        .1;
    let body = after.split_once("```toml\n").expect("a toml block").1;
    body.split_once("```").expect("the block ends").0.to_owned()
}

/// Maps whose keys are names the operator chooses.
const NAMED: [&str; 4] = [
    "external_systems",
    "databases",
    "methods",
    "notification_lists",
];

/// Every leaf key path (`a.b.c`), with chosen names and array positions as `*`.
fn keys(v: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    let parent = prefix.rsplit('.').next().unwrap_or("");
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let k = if NAMED.contains(&parent) {
                    "*"
                } else {
                    k.as_str()
                };
                let path = if prefix.is_empty() {
                    k.to_owned()
                } else {
                    format!("{prefix}.{k}")
                };
                keys(v, &path, out);
            }
        }
        toml::Value::Array(a) if a.iter().all(toml::Value::is_table) && !a.is_empty() => {
            for v in a {
                keys(v, &format!("{prefix}.*"), out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

fn documented_and_actual(text: &str, parsed: toml::Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut documented = BTreeSet::new();
    keys(
        &toml::from_str::<toml::Value>(text).unwrap(),
        "",
        &mut documented,
    );
    let mut actual = BTreeSet::new();
    keys(&parsed, "", &mut actual);
    (documented, actual)
}

#[test]
fn the_site_toml_reference_is_complete_and_valid() {
    let text = block(&readme(), "site.toml");
    let dir = tempfile::tempdir().unwrap();
    // The files the block names (read when the configuration is checked).
    std::fs::write(dir.path().join("central-ca.pem"), "").unwrap();
    let config = SiteConfig::parse(&text, dir.path())
        .unwrap_or_else(|e| panic!("the README's site.toml: {e}"));
    let (documented, actual) =
        documented_and_actual(&text, toml::Value::try_from(&config).unwrap());
    assert_eq!(
        documented, actual,
        "README site.toml reference vs the configuration types (left: documented, right: what the types have)"
    );
}

#[test]
fn the_central_toml_reference_is_complete_and_valid() {
    let text = block(&readme(), "central.toml");
    let dir = tempfile::tempdir().unwrap();
    let config = CentralConfig::parse(&text, dir.path())
        .unwrap_or_else(|e| panic!("the README's central.toml: {e}"));
    let (documented, actual) =
        documented_and_actual(&text, toml::Value::try_from(&config).unwrap());
    assert_eq!(
        documented, actual,
        "README central.toml reference vs the configuration types (left: documented, right: what the types have)"
    );
}
