//! Policy bundles and per-check modes.

use std::fmt;

use super::reason::Reason;

/// What a failed check does to the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckMode {
    /// The check does not run.
    Off,
    /// A failure is listed and adds the check's weight to the score.
    Score,
    /// A failure rejects the HELO.
    Reject,
}

impl CheckMode {
    /// The mode as written in the config file.
    pub const fn as_str(self) -> &'static str {
        match self {
            CheckMode::Off => "off",
            CheckMode::Score => "score",
            CheckMode::Reject => "reject",
        }
    }
}

/// A named set of check modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Bundle {
    /// Only impossible or malformed claims reject.
    Lenient,
    /// The spec's tables: hard checks reject, soft checks score.
    #[default]
    Standard,
    /// A complete, resolvable FQDN and never a literal: soft checks reject too.
    Strict,
}

impl Bundle {
    /// The bundle's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Bundle::Lenient => "lenient",
            Bundle::Standard => "standard",
            Bundle::Strict => "strict",
        }
    }

    /// The mode this bundle gives a check.
    pub fn mode(self, reason: Reason) -> CheckMode {
        use Reason::*;
        match (self, reason) {
            (_, DnsTempfail) => CheckMode::Reject,
            (Bundle::Strict, _) => CheckMode::Reject,
            (_, LiteralNotAllowed) => CheckMode::Off,
            (_, r) if r.is_soft() => CheckMode::Score,
            (
                Bundle::Lenient,
                NoHelo | BareIp | Syntax | Localhost | BadLiteralIp | Impersonation | Denylisted,
            ) => CheckMode::Reject,
            (Bundle::Lenient, _) => CheckMode::Score,
            (Bundle::Standard, _) => CheckMode::Reject,
        }
    }
}

impl fmt::Display for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The effective mode and weight of every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckTable {
    modes: [CheckMode; Reason::ALL.len()],
    weights: [u32; Reason::ALL.len()],
}

impl CheckTable {
    /// The bundle's modes and the default weights.
    pub fn from_bundle(bundle: Bundle) -> CheckTable {
        CheckTable {
            modes: Reason::ALL.map(|r| bundle.mode(r)),
            weights: Reason::ALL.map(Reason::default_weight),
        }
    }

    /// The mode of a check.
    pub fn mode(&self, reason: Reason) -> CheckMode {
        self.modes[reason.index()]
    }

    /// The weight of a check.
    pub fn weight(&self, reason: Reason) -> u32 {
        self.weights[reason.index()]
    }

    /// Whether the check runs at all.
    pub fn enabled(&self, reason: Reason) -> bool {
        self.mode(reason) != CheckMode::Off
    }

    /// Overrides one mode.
    pub fn set_mode(&mut self, reason: Reason, mode: CheckMode) {
        self.modes[reason.index()] = mode;
    }

    /// Overrides one weight.
    pub fn set_weight(&mut self, reason: Reason, weight: u32) {
        self.weights[reason.index()] = weight;
    }

    /// What a failure of this check adds to the score: soft checks always add their weight
    /// (also where they reject, as in `strict`); hard checks add theirs only in `score` mode.
    pub fn score_of(&self, reason: Reason) -> u32 {
        match self.mode(reason) {
            CheckMode::Off => 0,
            CheckMode::Score => self.weight(reason),
            CheckMode::Reject if reason.is_soft() => self.weight(reason),
            CheckMode::Reject => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_matches_the_spec_tables() {
        let t = CheckTable::from_bundle(Bundle::Standard);
        for r in Reason::ALL {
            let want = if r == Reason::LiteralNotAllowed {
                CheckMode::Off
            } else if r.is_soft() {
                CheckMode::Score
            } else {
                CheckMode::Reject
            };
            assert_eq!(t.mode(r), want, "{r}");
        }
        assert_eq!(t.weight(Reason::LiteralMismatch), 2);
        assert_eq!(t.weight(Reason::Dynamic), 1);
        assert_eq!(t.score_of(Reason::Syntax), 0);
    }

    #[test]
    fn lenient_rejects_only_its_list() {
        let t = CheckTable::from_bundle(Bundle::Lenient);
        let rejecting: Vec<_> = Reason::ALL
            .into_iter()
            .filter(|&r| t.mode(r) == CheckMode::Reject && r != Reason::DnsTempfail)
            .map(Reason::as_str)
            .collect();
        assert_eq!(
            rejecting,
            [
                "no_helo",
                "bare_ip",
                "syntax",
                "localhost",
                "bad_literal_ip",
                "impersonation",
                "denylisted"
            ]
        );
        assert_eq!(t.score_of(Reason::NotFqdn), 3);
    }

    #[test]
    fn strict_rejects_everything_and_literals() {
        let t = CheckTable::from_bundle(Bundle::Strict);
        assert!(Reason::ALL.iter().all(|&r| t.mode(r) == CheckMode::Reject));
        assert_eq!(t.score_of(Reason::LiteralMismatch), 2);
    }
}
