//! `site.toml` and `central.toml` as the roles load them: any text either
//! parses into a configuration or is refused with an error naming what was
//! wrong; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = std::path::Path::new("/nonexistent/sitelink-fuzz");
    if let Err(e) = sitelink_site::SiteConfig::parse(text, base) {
        assert!(!e.to_string().is_empty());
    }
    if let Err(e) = sitelink_central::CentralConfig::parse(text, base) {
        assert!(!e.is_empty());
    }
});
