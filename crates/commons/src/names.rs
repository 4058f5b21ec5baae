//! Validated names: [`SiteName`].

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} {input:?}: {reason}")]
pub struct InvalidName {
    pub what: &'static str,
    pub input: String,
    pub reason: &'static str,
}

/// The name of a site: 1–64 characters of `[A-Za-z0-9_.-]`, starting with a
/// letter or digit. It appears in URLs, config keys and log lines, so it is
/// kept to characters that need no escaping anywhere.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SiteName(String);

impl SiteName {
    pub fn parse(s: &str) -> Result<Self, InvalidName> {
        let bad = |reason| InvalidName {
            what: "site name",
            input: s.chars().take(80).collect(),
            reason,
        };
        if s.is_empty() || s.len() > 64 {
            return Err(bad("must be 1 to 64 characters"));
        }
        if !s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) {
            return Err(bad("must start with a letter or digit"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(bad("may contain only letters, digits, '_', '.' and '-'"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SiteName {
    type Error = InvalidName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SiteName> for String {
    fn from(n: SiteName) -> String {
        n.0
    }
}

impl fmt::Display for SiteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_names() {
        assert!(SiteName::parse("plant-1").is_ok());
        assert!(SiteName::parse("").is_err());
        assert!(SiteName::parse("-x").is_err());
        let e = SiteName::parse("a b").unwrap_err();
        assert!(e.to_string().contains("\"a b\""), "{e}");
    }
}
