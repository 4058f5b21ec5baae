//! The lifecycle state machine of SPEC §3: the one place that says which
//! status may follow which. The site's Store-and-Forward Engine calls
//! [`check_transition`] on every row change; central uses it to reject
//! impossible telemetry.

use crate::TrackedOperationStatus::{self, *};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransitionError {
    #[error("a new operation must start as Pending, not {to}")]
    MustStartPending { to: TrackedOperationStatus },
    #[error("{from} is terminal; it never changes (attempted {from} -> {to})")]
    Terminal {
        from: TrackedOperationStatus,
        to: TrackedOperationStatus,
    },
    #[error("transition {from} -> {to} is not allowed")]
    NotAllowed {
        from: TrackedOperationStatus,
        to: TrackedOperationStatus,
    },
}

/// Whether a row may go from `from` (`None`: the row is new) to `to`.
pub fn check_transition(
    from: Option<TrackedOperationStatus>,
    to: TrackedOperationStatus,
) -> Result<(), TransitionError> {
    let Some(from) = from else {
        return if to == Pending {
            Ok(())
        } else {
            Err(TransitionError::MustStartPending { to })
        };
    };
    if from.is_terminal() {
        return Err(TransitionError::Terminal { from, to });
    }
    let allowed = match from {
        Pending => matches!(to, Delivered | Failed | Retrying | Parked),
        Retrying => matches!(to, Retrying | Delivered | Failed | Parked),
        // Retrying: operator Retry (fresh budget); Discarded: operator Discard.
        Parked => matches!(to, Retrying | Discarded),
        Delivered | Failed | Discarded => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(TransitionError::NotAllowed { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of SPEC §3, written out independently of the match above.
    const ALLOWED: &[(Option<TrackedOperationStatus>, TrackedOperationStatus)] = &[
        (None, Pending),
        (Some(Pending), Delivered),
        (Some(Pending), Failed),
        (Some(Pending), Retrying),
        (Some(Pending), Parked),
        (Some(Retrying), Retrying),
        (Some(Retrying), Delivered),
        (Some(Retrying), Failed),
        (Some(Retrying), Parked),
        (Some(Parked), Retrying),
        (Some(Parked), Discarded),
    ];

    #[test]
    fn exactly_the_spec_table_is_allowed() {
        let froms =
            std::iter::once(None).chain(TrackedOperationStatus::ALL.iter().copied().map(Some));
        for from in froms {
            for &to in TrackedOperationStatus::ALL {
                let expected = ALLOWED.contains(&(from, to));
                assert_eq!(
                    check_transition(from, to).is_ok(),
                    expected,
                    "{from:?} -> {to}"
                );
            }
        }
    }

    #[test]
    fn terminal_error_names_both_ends() {
        let e = check_transition(Some(Delivered), Retrying).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Delivered is terminal; it never changes (attempted Delivered -> Retrying)"
        );
    }
}
