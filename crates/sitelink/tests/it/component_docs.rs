//! `docs/components/` has one doc per component of SPEC §2, each with the
//! sections in the order SPEC §2 asks for, and their Dependencies and
//! Interactions are reciprocal: a doc that names another component there is
//! named back by that component's doc (in either section).

use std::collections::{BTreeMap, BTreeSet};

/// SPEC §2's components and their docs.
const COMPONENTS: [(&str, &str); 13] = [
    ("Commons", "commons.md"),
    ("Store-and-Forward Engine", "store-and-forward-engine.md"),
    ("External System Gateway", "external-system-gateway.md"),
    ("Site Runtime", "site-runtime.md"),
    ("Notification Service", "notification-service.md"),
    (
        "Central–Site Communication",
        "central-site-communication.md",
    ),
    ("Configuration Database", "configuration-database.md"),
    ("Site Call Audit", "site-call-audit.md"),
    ("Notification Outbox", "notification-outbox.md"),
    ("Health Monitoring", "health-monitoring.md"),
    ("Central UI", "central-ui.md"),
    ("Cluster Infrastructure", "cluster-infrastructure.md"),
    ("Host", "host.md"),
];

fn doc(file: &str) -> String {
    let path = format!(
        "{}/../../docs/components/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The text of a `## heading` section.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("no section {heading:?}"));
    let rest = &text[start + heading.len() + 5..];
    rest.find("\n## ").map_or(rest, |end| &rest[..end])
}

#[test]
fn every_component_has_a_doc_with_the_sections_in_order() {
    for (name, file) in COMPONENTS {
        let text = doc(file);
        assert!(
            text.starts_with(&format!("# {name}")),
            "{file} is titled {name}"
        );
        let mut at = 0;
        for heading in [
            "Purpose",
            "Location",
            "Responsibilities",
            "Dependencies",
            "Interactions",
        ] {
            let found = text[at..]
                .find(&format!("\n## {heading}\n"))
                .unwrap_or_else(|| {
                    panic!("{file}: no `## {heading}` after the sections before it")
                });
            at += found + 1;
        }
    }
}

#[test]
fn dependencies_and_interactions_are_named_back() {
    let mut named: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, file) in COMPONENTS {
        let text = doc(file);
        // Whitespace runs as one space: a name may wrap across lines.
        let links = format!(
            "{}\n{}",
            section(&text, "Dependencies"),
            section(&text, "Interactions")
        )
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
        let others = COMPONENTS
            .iter()
            .map(|(other, _)| *other)
            .filter(|other| *other != name && links.contains(other))
            .collect();
        named.insert(name, others);
    }
    let mut missing = Vec::new();
    for (a, others) in &named {
        for b in others {
            if !named[b].contains(a) {
                missing.push(format!("{a} names {b}, but {b}'s doc does not name {a}"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
