//! The error fingerprint (issue 21): an error text with its variable parts
//! taken out, so that the parked calls of one cause fall into one failure
//! group however their details differ.
//!
//! What is kept: a leading code the site writes before its message
//! (`HTTP 503 …`, `SQLSTATE 55P03: …`, `MySQL 1205: …`, `SQLite 5: …`),
//! verbatim; and the words of the text. What is replaced: quoted values
//! (`<value>`), UUIDs (`<uuid>`), timestamps (`<time>`), IP addresses with
//! or without a port (`<addr>`), ids (a word of 8 or more letters and
//! digits with a digit in it: `<id>`), and every other run of digits
//! (`<n>`). Whitespace is collapsed, and the result is at most
//! [`FINGERPRINT_MAX_CHARS`].
//!
//! Hand-written rather than a set of regexes: one left-to-right pass over
//! short texts, no extra dependency, and each rule reads as what it
//! replaces.

/// The longest fingerprint, in characters.
pub const FINGERPRINT_MAX_CHARS: usize = 200;

/// The fingerprint of an error text (see the module doc). An empty text
/// has an empty fingerprint.
pub fn fingerprint(error: &str) -> String {
    let error = error.trim();
    let (code, rest) = leading_code(error);
    let mut out = String::with_capacity(error.len().min(FINGERPRINT_MAX_CHARS) + 8);
    if let Some(code) = code {
        out.push_str(code);
    }
    normalise(rest, &mut out);
    let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    match out.char_indices().nth(FINGERPRINT_MAX_CHARS) {
        Some((cut, _)) => out[..cut].trim_end().to_owned(),
        None => out,
    }
}

/// `HTTP 503`, `SQLSTATE 55P03`, `MySQL 1205` or `SQLite 5` at the start
/// of the text, and what follows it.
fn leading_code(text: &str) -> (Option<&str>, &str) {
    for prefix in ["HTTP ", "SQLSTATE ", "MySQL ", "SQLite "] {
        if let Some(after) = text.strip_prefix(prefix) {
            let len = after
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(after.len());
            if len > 0 && after[..len].bytes().any(|b| b.is_ascii_digit()) {
                let end = prefix.len() + len;
                return (Some(&text[..end]), &text[end..]);
            }
        }
    }
    (None, text)
}

fn normalise(text: &str, out: &mut String) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let rest = &text[i..];
        if matches!(c, b'\'' | b'"' | b'`') {
            // A quoted value, when it closes within 200 bytes.
            if let Some(end) = rest[1..].find(c as char).filter(|&e| e < 200) {
                out.push_str("<value>");
                i += end + 2;
                continue;
            }
        }
        let at_word_start = i == 0 || !is_word(b[i - 1]);
        if at_word_start {
            if let Some(n) = uuid_len(rest) {
                out.push_str("<uuid>");
                i += n;
                continue;
            }
            if let Some(n) = time_len(rest) {
                out.push_str("<time>");
                i += n;
                continue;
            }
            if let Some(n) = addr_len(rest) {
                out.push_str("<addr>");
                i += n;
                continue;
            }
            let word = rest.bytes().take_while(|&c| is_word(c)).count();
            if word >= 8 && rest.as_bytes()[..word].iter().any(u8::is_ascii_digit) {
                out.push_str("<id>");
                i += word;
                continue;
            }
        }
        if c.is_ascii_digit() {
            let n = rest.bytes().take_while(u8::is_ascii_digit).count();
            out.push_str("<n>");
            i += n;
            continue;
        }
        let ch = rest.chars().next().expect("not at the end");
        out.push(ch);
        i += ch.len_utf8();
    }
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// `8-4-4-4-12` hex digits.
fn uuid_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    for (k, group) in [8, 4, 4, 4, 12].into_iter().enumerate() {
        if k > 0 {
            (b.get(i) == Some(&b'-')).then_some(())?;
            i += 1;
        }
        let hex = b[i.min(b.len())..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        (hex == group).then_some(())?;
        i += group;
    }
    Some(i)
}

/// `YYYY-MM-DD`, then optionally `T` or a space and `HH:MM[:SS[.frac]]`,
/// then optionally `Z` or `±HH[:]MM`.
fn time_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let digits =
        |at: usize, n: usize| b.len() >= at + n && b[at..at + n].iter().all(u8::is_ascii_digit);
    if !(digits(0, 4)
        && b.get(4) == Some(&b'-')
        && digits(5, 2)
        && b.get(7) == Some(&b'-')
        && digits(8, 2))
    {
        return None;
    }
    let mut i = 10;
    if matches!(b.get(i), Some(b'T' | b' '))
        && digits(i + 1, 2)
        && b.get(i + 3) == Some(&b':')
        && digits(i + 4, 2)
    {
        i += 6;
        if b.get(i) == Some(&b':') && digits(i + 1, 2) {
            i += 3;
            if b.get(i) == Some(&b'.') {
                i += 1 + b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            }
        }
        if b.get(i) == Some(&b'Z') {
            i += 1;
        } else if matches!(b.get(i), Some(b'+' | b'-')) && digits(i + 1, 2) {
            i += 3;
            if b.get(i) == Some(&b':') {
                i += 1;
            }
            if digits(i, 2) {
                i += 2;
            }
        }
    }
    Some(i)
}

/// An IPv4 address (`a.b.c.d`), or a bracketed IPv6 one (`[::1]`), with an
/// optional `:port`.
fn addr_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = if b.first() == Some(&b'[') {
        let close = s.find(']')?;
        s[1..close].parse::<std::net::Ipv6Addr>().ok()?;
        close + 1
    } else {
        let len = b
            .iter()
            .take_while(|c| c.is_ascii_digit() || **c == b'.')
            .count();
        s[..len].parse::<std::net::Ipv4Addr>().ok()?;
        len
    };
    if b.get(i) == Some(&b':') {
        let port = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if port > 0 {
            i += 1 + port;
        }
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realistic_errors_fall_into_their_groups() {
        let same = |a: &str, b: &str| {
            assert_eq!(fingerprint(a), fingerprint(b), "{a:?} vs {b:?}");
            fingerprint(a)
        };
        // Connection refused on different ports and hosts.
        let refused = same(
            "error sending request for url (http://10.0.0.7:8081/api/orders): connection refused (os error 111)",
            "error sending request for url (http://10.0.0.9:9090/api/orders): connection refused (os error 111)",
        );
        assert_eq!(
            refused,
            "error sending request for url (http://<addr>/api/orders): connection refused (os error <n>)"
        );
        // 503 with different request ids.
        let unavailable = same(
            "HTTP 503 Service Unavailable: request id 7f3a9c2d81e4 rejected",
            "HTTP 503 Service Unavailable: request id 0c44be1f29aa rejected",
        );
        assert!(unavailable.starts_with("HTTP 503 "), "{unavailable}");
        assert_ne!(
            fingerprint("HTTP 502 Bad Gateway"),
            fingerprint("HTTP 503 Bad Gateway"),
            "the status code is kept"
        );
        // SQL lock timeouts, by code.
        let locked = same(
            "SQLSTATE 55P03: canceling statement due to lock timeout on relation 16384",
            "SQLSTATE 55P03: canceling statement due to lock timeout on relation 16421",
        );
        assert!(locked.starts_with("SQLSTATE 55P03:"), "{locked}");
        same(
            "MySQL 1205: Lock wait timeout exceeded; try restarting transaction",
            "MySQL 1205: Lock wait timeout exceeded; try restarting transaction",
        );
        // 400s naming different articles, quoted or not.
        same(
            "HTTP 400 Bad Request: unknown article 'X-999'",
            "HTTP 400 Bad Request: unknown article 'AB-12'",
        );
        same(
            "HTTP 400 Bad Request: unknown article X-999",
            "HTTP 400 Bad Request: unknown article X-123",
        );
        // UUIDs and timestamps.
        same(
            "order 01a21dc7-e371-702d-9d9a-b8a61109dc05 expired at 2026-12-07T08:00:00Z",
            "order 01a21dc7-e371-702d-9d9a-b8a61109dc99 expired at 2026-12-08 09:15:02.123+01:00",
        );
        // Different causes stay apart.
        assert_ne!(
            fingerprint("connection refused"),
            fingerprint("connection reset")
        );
    }

    #[test]
    fn short_and_odd_texts() {
        assert_eq!(fingerprint(""), "");
        assert_eq!(fingerprint("  timed   out \n"), "timed out");
        assert_eq!(fingerprint("HTTP"), "HTTP");
        assert_eq!(fingerprint("unclosed 'quote 12"), "unclosed 'quote <n>");
        assert_eq!(fingerprint("[::1]:8080 down"), "<addr> down");
        assert_eq!(
            fingerprint("1.2.3 is no address"),
            "<n>.<n>.<n> is no address"
        );
        assert_eq!(fingerprint("Grüße 5 ✓"), "Grüße <n> ✓");
        let long = "word ".repeat(100);
        assert!(fingerprint(&long).chars().count() <= FINGERPRINT_MAX_CHARS);
    }
}
