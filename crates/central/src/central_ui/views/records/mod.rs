//! The Site Calls page and the Notification Outbox page (SPEC §5.5), one
//! code path for both: the filtered, keyset-paged list (newest first,
//! Older/Newer, never OFFSET; every filter in the URL), the detail page of
//! one id with its audit-log entries, and Retry/Discard behind a
//! confirmation page, through [`OperatorActions`] like the REST API.
//!
//! [`list`] has the list page, [`groups`] the failure groups of the Site
//! Calls page, [`detail`] the detail page, its htmx partial, the
//! confirmation page and the action.
//!
//! [`OperatorActions`]: crate::operator_actions::OperatorActions

mod detail;
mod groups;
mod list;

pub use detail::{act, attempts, confirm, detail, partial, ConfirmPage};
pub use groups::groups;
pub use list::{export, list};

use crate::operator_actions::Subject;

/// Rows per page.
pub const PAGE_ROWS: u32 = 50;
/// Characters of `last_error` (or a subject) shown in a list row.
pub(super) const SHORT_TEXT: usize = 120;

/// Which rows a handler serves: the Site Calls pages or the Notification
/// Outbox pages (one code path, two route sets).
pub trait Pages: Send + Sync + 'static {
    const SUBJECT: Subject;
}

pub struct SiteCallPages;
pub struct NotificationPages;

impl Pages for SiteCallPages {
    const SUBJECT: Subject = Subject::SiteCall;
}

impl Pages for NotificationPages {
    const SUBJECT: Subject = Subject::Notification;
}

/// Every site's name, for a filter form's site choice.
async fn site_names(
    st: &crate::central_ui::UiState,
) -> Result<Vec<String>, crate::central_ui::views::UiError> {
    Ok(st
        .db
        .sites()
        .list()
        .await
        .map_err(crate::central_ui::views::UiError::internal)?
        .into_iter()
        .map(|s| s.name)
        .collect())
}

fn base(subject: Subject) -> &'static str {
    match subject {
        Subject::SiteCall => "/site-calls",
        Subject::Notification => "/notifications",
    }
}

fn noun(subject: Subject) -> &'static str {
    match subject {
        Subject::SiteCall => "site call",
        Subject::Notification => "notification",
    }
}
