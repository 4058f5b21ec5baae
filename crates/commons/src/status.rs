//! [`TrackedOperationStatus`] and [`Kind`]: closed enums with the exact
//! names of SPEC §3, used in SQL columns, JSON and log lines alike.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown {what} {input:?} (expected one of: {})", .expected.join(", "))]
pub struct UnknownValue {
    pub what: &'static str,
    pub input: String,
    pub expected: &'static [&'static str],
}

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident, $what:literal, [$($variant:ident),+ $(,)?]) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant)),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $(stringify!($variant) => Ok($name::$variant),)+
                    _ => Err(UnknownValue {
                        what: $what,
                        input: s.chars().take(64).collect(),
                        expected: &[$(stringify!($variant)),+],
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum!(
    /// Where a tracked operation is in its lifecycle (SPEC §3).
    TrackedOperationStatus,
    "status",
    [Pending, Retrying, Delivered, Parked, Failed, Discarded]
);

named_enum!(
    /// What kind of operation is tracked.
    Kind,
    "kind",
    [ExternalCall, DatabaseWrite, Notification]
);

impl TrackedOperationStatus {
    /// `Delivered`, `Failed` and `Discarded` are terminal: nothing follows.
    /// `Parked` is not: it waits for an operator.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Delivered | Self::Failed | Self::Discarded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_named() {
        for s in TrackedOperationStatus::ALL {
            assert_eq!(s.as_str().parse::<TrackedOperationStatus>().unwrap(), *s);
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
        }
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), *k);
        }
        let e = "Exploded".parse::<TrackedOperationStatus>().unwrap_err();
        assert!(e.to_string().contains("Exploded") && e.to_string().contains("Parked"));
    }
}
