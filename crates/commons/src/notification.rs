//! The limits and checks of a notification (`Notify.Send(list, subject,
//! body)`), shared by the site, which refuses bad input at once with a clear
//! error to the script, and central, which makes whatever still arrives safe
//! (a peer may be older, newer or broken).

/// Longest subject, in characters (a header line stays well under the
/// 998-octet limit of RFC 5322 even when encoded).
pub const NOTIFICATION_SUBJECT_MAX_CHARS: usize = 255;
/// Largest body, in bytes of UTF-8.
pub const NOTIFICATION_BODY_MAX_BYTES: usize = 64 * 1024;
/// Longest list name, in characters.
pub const NOTIFICATION_LIST_MAX_CHARS: usize = 100;

/// Why a notification was refused at the site.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotificationError {
    #[error("Notify.Send: the list name is empty")]
    EmptyList,
    #[error("Notify.Send: the list name is longer than {NOTIFICATION_LIST_MAX_CHARS} characters")]
    ListTooLong,
    #[error(
        "Notify.Send: the subject contains a line break (CR or LF), which could forge mail headers"
    )]
    LineBreakInSubject,
    #[error("Notify.Send: the subject is longer than {NOTIFICATION_SUBJECT_MAX_CHARS} characters")]
    SubjectTooLong,
    #[error(
        "Notify.Send: the body is {0} bytes, more than the {NOTIFICATION_BODY_MAX_BYTES} allowed"
    )]
    BodyTooLarge(usize),
}

/// Checks a notification as a script gave it.
pub fn check_notification(list: &str, subject: &str, body: &str) -> Result<(), NotificationError> {
    if list.trim().is_empty() {
        return Err(NotificationError::EmptyList);
    }
    if list.chars().count() > NOTIFICATION_LIST_MAX_CHARS {
        return Err(NotificationError::ListTooLong);
    }
    if subject.contains(['\r', '\n']) {
        return Err(NotificationError::LineBreakInSubject);
    }
    if subject.chars().count() > NOTIFICATION_SUBJECT_MAX_CHARS {
        return Err(NotificationError::SubjectTooLong);
    }
    if body.len() > NOTIFICATION_BODY_MAX_BYTES {
        return Err(NotificationError::BodyTooLarge(body.len()));
    }
    Ok(())
}

/// A subject made safe whatever it holds: control characters (CR and LF
/// among them) become spaces, and it is cut to the limit.
pub fn safe_subject(subject: &str) -> String {
    let clean: String = subject
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    crate::truncate_chars(&clean, NOTIFICATION_SUBJECT_MAX_CHARS).into_owned()
}

/// A body cut to the limit (at a character boundary, marked).
pub fn safe_body(body: &str) -> String {
    if body.len() <= NOTIFICATION_BODY_MAX_BYTES {
        return body.to_owned();
    }
    let mut cut = NOTIFICATION_BODY_MAX_BYTES - 32;
    while !body.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…[truncated]", &body[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_notifications_are_named() {
        assert_eq!(check_notification("l", "s", "b"), Ok(()));
        assert_eq!(
            check_notification("l", "a\r\nBcc: x@y", "b"),
            Err(NotificationError::LineBreakInSubject)
        );
        assert_eq!(
            check_notification(" ", "s", "b"),
            Err(NotificationError::EmptyList)
        );
        let big = "x".repeat(NOTIFICATION_BODY_MAX_BYTES + 1);
        assert!(check_notification("l", "s", &big)
            .unwrap_err()
            .to_string()
            .contains("65537 bytes"));
    }

    #[test]
    fn central_makes_what_arrives_safe() {
        assert_eq!(safe_subject("a\r\nBcc: evil@x"), "a  Bcc: evil@x");
        let big = "é".repeat(NOTIFICATION_BODY_MAX_BYTES);
        let cut = safe_body(&big);
        assert!(cut.len() <= NOTIFICATION_BODY_MAX_BYTES && cut.ends_with("…[truncated]"));
    }
}
